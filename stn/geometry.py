"""Sampling grids for affine, projective and thin-plate-spline warps, batched, on any device.

Pure PyTorch, shared by the distorted-MNIST generators (stn/data/distortions.py) and the spatial
transformers. Every grid maps *output* pixel centres to *input* sampling positions in the
normalised coordinates of `F.grid_sample` with `align_corners=False`: -1 and 1 are the outer
edges of the image, so a pixel is 2 / size wide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_centres(
    height: int,
    width: int,
    device: torch.device | None = None,
    align_corners: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(H * W, 2) normalised (x, y) of every pixel centre, row by row (with `align_corners`, the
    corner pixels' centres at -1 and 1, as `F.grid_sample(align_corners=True)` reads them)."""

    def centres(count: int) -> torch.Tensor:
        if align_corners:
            return (
                torch.linspace(-1.0, 1.0, count, device=device, dtype=dtype)
                if count > 1
                else torch.zeros(1, device=device, dtype=dtype)
            )
        return (torch.arange(count, device=device, dtype=dtype) + 0.5) * 2 / count - 1

    y, x = torch.meshgrid(centres(height), centres(width), indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def affine_grid(theta: torch.Tensor, height: int, width: int, align_corners: bool = False) -> torch.Tensor:
    """(N, H, W, 2) grid of the (N, 2, 3) affine `theta`: what `F.affine_grid` computes, in plain
    tensor operations, so that a model using it exports to ONNX (which has no affine_grid)."""
    points = pixel_centres(height, width, theta.device, align_corners, theta.dtype)  # (H * W, 2)
    homogeneous = torch.cat([points, torch.ones_like(points[:, :1])], dim=1)  # (H * W, 3)
    return (homogeneous @ theta.transpose(1, 2)).view(-1, height, width, 2)


def map_points(theta: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, P, 2) normalised points mapped through the (N, 2, 3) affine theta: an output position
    to the input position it samples, as the sampling grid maps pixel centres."""
    return points @ theta[:, :, :2].transpose(1, 2) + theta[:, :, 2].unsqueeze(1)


def invert_affine(theta: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) inverse of an (N, 2, 3) affine theta: maps input positions back to the output
    positions that sample them (where a point of the input lands in the transformer's output)."""
    linear_inverse = torch.linalg.inv(theta[:, :, :2])  # (N, 2, 2)
    offset = -(linear_inverse @ theta[:, :, 2:])  # (N, 2, 1)
    return torch.cat([linear_inverse, offset], dim=2)


def to_pixels(points: torch.Tensor, height: int, width: int, align_corners: bool = False) -> torch.Tensor:
    """Normalised (x, y) to pixel coordinates: (0, 0) the top-left corner of the top-left pixel,
    (W, H) the bottom-right corner. -1 and 1 are the image's outer edges (align_corners=False) or
    its corner pixels' centres (align_corners=True), as in `grid_sample`."""
    if align_corners:
        return (points + 1) * points.new_tensor([(width - 1) / 2, (height - 1) / 2]) + 0.5
    return (points + 1) * points.new_tensor([width / 2, height / 2])


def canvas_corners(device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(4, 2) normalised corners of a canvas: top-left, top-right, bottom-right, bottom-left."""
    return torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=device, dtype=dtype)


def sampled_region(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 4, 2) the four corners of the region an (N, 2, 3) affine theta samples, in the input
    canvas's pixels (`to_pixels`), in `canvas_corners`' order: the transformer's output canvas
    is this quadrilateral of its input."""
    corners = canvas_corners(theta.device, theta.dtype).expand(theta.shape[0], 4, 2)
    return to_pixels(map_points(theta, corners), height, width)


def sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of (N, C, H, W) images at an (N, h, w, 2) grid, zeros outside."""
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_theta(
    angle: torch.Tensor, scale: torch.Tensor, translation: torch.Tensor, in_size: int, out_size: int
) -> torch.Tensor:
    """(N, 2, 3) theta for `F.affine_grid` that draws the input rotated by `angle` (radians),
    scaled by `scale` and centred `translation` (N, 2) output pixels from the output's centre."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    inverse_rotation = torch.stack(
        [torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2
    )  # (N, 2, 2)
    # output normalised -> output pixels (x out/2), undo the placement, -> input normalised (/ in/2)
    linear = inverse_rotation * (out_size / in_size / scale)[:, None, None]
    offset = -(inverse_rotation @ translation.unsqueeze(-1)).squeeze(-1) * (2 / in_size / scale)[:, None]
    return torch.cat([linear, offset.unsqueeze(-1)], dim=2)


def homography_from_points(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) homographies H (with H[2, 2] = 1) that map the four (N, 4, 2) `source` points to
    `target` (direct linear transform: eight equations, eight unknowns)."""
    x, y = source.unbind(-1)  # (N, 4) each
    u, v = target.unbind(-1)
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)  # (N, 4, 8)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    system = torch.cat([rows_u, rows_v], dim=1)  # (N, 8, 8)
    rhs = torch.cat([u, v], dim=1).unsqueeze(-1)  # (N, 8, 1)
    h = torch.linalg.solve(system, rhs).squeeze(-1)  # (N, 8)
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3)


def homography_grid(homography: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H, W, 2) grid: each output pixel centre mapped through the (N, 3, 3) homography."""
    points = pixel_centres(height, width, homography.device, dtype=homography.dtype)
    homogeneous = torch.cat([points, torch.ones_like(points[:, :1])], dim=1)  # (H * W, 3)
    mapped = homogeneous @ homography.transpose(1, 2)  # (N, H * W, 3)
    grid = mapped[..., :2] / mapped[..., 2:].clamp_min(1e-6)
    return grid.view(-1, height, width, 2)


def control_grid(
    points_per_side: int, extent: float = 1.0, device: torch.device | None = None
) -> torch.Tensor:
    """(K, 2) control points on a square grid spanning [-extent, extent]^2, K = points_per_side^2."""
    side = torch.linspace(-extent, extent, points_per_side, device=device)
    y, x = torch.meshgrid(side, side, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def _tps_kernel(points: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """U(r) = r^2 log r^2 between (..., P, 2) points and (K, 2) control points: (..., P, K)."""
    squared = (points.unsqueeze(-2) - control).pow(2).sum(-1)
    return squared * torch.log(squared.clamp_min(1e-12))


def tps_system(control: torch.Tensor) -> torch.Tensor:
    """The (K + 3, K + 3) linear system of a thin-plate spline through (K, 2) control points."""
    count = control.shape[0]
    affine = torch.cat([torch.ones_like(control[:, :1]), control], dim=1)  # (K, 3)
    system = torch.zeros(count + 3, count + 3, device=control.device, dtype=control.dtype)
    system[:count, :count] = _tps_kernel(control, control)
    system[:count, count:] = affine
    system[count:, :count] = affine.T
    return system


def tps_coefficients(control: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, K + 3, 2) thin-plate-spline coefficients (K kernel weights, then the affine part) of
    the map that sends the (K, 2) `control` points to the (N, K, 2) `target` points with the least
    bending."""
    rhs = torch.cat([target, target.new_zeros(target.shape[0], 3, 2)], dim=1)  # (N, K + 3, 2)
    return torch.linalg.solve(tps_system(control), rhs)


def tps_grid(control: torch.Tensor, coefficients: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H, W, 2) grid: each output pixel centre mapped through the thin-plate spline."""
    points = pixel_centres(height, width, coefficients.device, dtype=coefficients.dtype)  # (P, 2)
    basis = torch.cat(
        [_tps_kernel(points, control), torch.ones_like(points[:, :1]), points], dim=1
    )  # (P, K + 3)
    return (basis @ coefficients).view(-1, height, width, 2)


def affine_fit(grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map closest (least squares) to an (N, H, W, 2) sampling grid: its (N, 2, 2)
    linear part and (N, 2) translation, in normalised coordinates. Exact for an affine grid; for
    a projective or spline grid, the affine part of what it does."""
    _, height, width, _ = grid.shape
    points = pixel_centres(height, width, grid.device)  # (P, 2)
    design = torch.cat([points, torch.ones_like(points[:, :1])], dim=1)  # (P, 3)
    solution = torch.linalg.pinv(design) @ grid.flatten(1, 2)  # (N, 3, 2): grid ~ design @ solution
    return solution[:, :2].transpose(1, 2), solution[:, 2]


def decompose_linear(linear: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, 2, 2) linear maps as (N,) scale (the square root of the area ratio: < 1 zooms in, > 1
    zooms out, since the grid maps the output onto the input), rotation in degrees, and shear (the
    QR decomposition's off-diagonal over its second diagonal entry)."""
    scale = linear.det().abs().sqrt()
    rotation = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0]))
    _, upper = torch.linalg.qr(linear)
    shear = upper[:, 0, 1] / upper[:, 1, 1].where(
        upper[:, 1, 1].abs() > 1e-8, torch.full_like(upper[:, 1, 1], 1e-8)
    )
    return {"scale": scale, "rotation": rotation, "shear": shear}


def outside_fraction(grid: torch.Tensor) -> torch.Tensor:
    """(N,) the fraction of an (N, H, W, 2) sampling grid that falls outside the input's canvas."""
    return (grid.abs() > 1).any(dim=-1).flatten(1).float().mean(dim=1)
