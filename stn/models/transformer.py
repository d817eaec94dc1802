"""Spatial transformers: parameters regressed from a localization net's features, a sampling grid
from them (stn/geometry.py), then bilinear sampling. Affine (the tutorial's, 6 parameters),
projective (8) and thin-plate spline (2 per control point); each starts as the identity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stn.errors import Allowed, check, integers, numbers
from stn.geometry import (
    affine_grid,
    canvas_corners,
    control_grid,
    homography_grid,
    map_points,
    tps_grid,
    tps_system,
)
from stn.models.layers import identity_head

IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class WarpingTransformer(nn.Module):
    """Warps its input with the transform regressed from `localization`'s features.

    `head`, the last layer, outputs this transformer's parameters and starts at exactly its identity
    (zero weight, identity bias), so the classifier first sees the untouched input. Subclasses
    give the parametrisation (`identity`, `to_theta`) and the grid (`sampling_grid`); those whose
    warps compose by matrix product (affine, projective) also give `as_matrix` / `from_matrix`.

    With `pad_with_background`, the image shows its background outside its borders: `grid_sample`
    pads with 0, but normalised MNIST has its background at -mean/std (about -0.42), so padding with
    0 would paint a bright frame whenever the transformer zooms out, and the network can learn to
    shrink the digit for it. Sampling `images - fill_value` and adding `fill_value` back pads with
    the background. `output_size` smaller than the input lets the classifier see a zoomed-in crop of
    a large canvas at a fraction of the cost (TC: 60x60 in, 30x30 out).
    """

    def __init__(
        self,
        localization: nn.Module,
        output_size: int | None = None,
        align_corners: bool = False,
        pad_with_background: bool = True,
        input_mean: float = 0.0,
        input_std: float = 1.0,
        identity: torch.Tensor | None = None,
    ) -> None:
        """`identity`: the flat parameters the head starts at, for a subclass whose `identity()` reads
        its own arguments (set after this returns); `self.identity()` otherwise."""
        super().__init__()
        check(self, integers(1).or_null(), output_size=output_size)
        self.localization = localization
        self.head = identity_head(
            localization.out_features, self.identity() if identity is None else identity
        )
        self.align_corners = align_corners
        self.fill_value = -input_mean / input_std if pad_with_background else 0.0
        self.output_size = (output_size, output_size) if output_size is not None else None  # (H, W)

    def identity(self) -> torch.Tensor:
        """The flat parameters of the identity transform: where the localization net starts."""
        raise NotImplementedError

    def to_theta(self, parameters: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sampling_grid(self, theta: torch.Tensor, size: tuple[int, int, int, int]) -> torch.Tensor:
        raise NotImplementedError

    def region_corners(self, theta: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """(N, 4, 2) normalised (x, y) of the input that the output's corners sample, in
        `canvas_corners`' order (top-left, top-right, bottom-right, bottom-left): here the output's
        corner pixels' centres (the output is `input_size` (H, W) unless it has its own size);
        exact corners where the warp maps points (affine, projective)."""
        height, width = self.output_size or input_size
        grid = self.sampling_grid(theta, (theta.shape[0], 1, height, width))  # (N, H, W, 2)
        return torch.stack([grid[:, 0, 0], grid[:, 0, -1], grid[:, -1, -1], grid[:, -1, 0]], dim=1)

    def warp(
        self, images: torch.Tensor, theta: torch.Tensor, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Sample (N, C, H, W) images at the grid given by theta, `size` (default: `output_size`, or
        the input's) high and wide."""
        height, width = size or self.output_size or images.shape[-2:]
        size = (images.shape[0], images.shape[1], height, width)
        sampling_grid = self.sampling_grid(theta, size)  # (N, H, W, 2)
        if self.fill_value == 0.0:
            return F.grid_sample(images, sampling_grid, align_corners=self.align_corners)
        shifted = images - self.fill_value
        warped = F.grid_sample(shifted, sampling_grid, align_corners=self.align_corners)
        return warped + self.fill_value

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the transformed images and the theta that produced them."""
        theta = self.to_theta(self.head(self.localization(images)))
        return self.warp(images, theta), theta


class SpatialTransformer(WarpingTransformer):
    """The affine transformer (the tutorial's and the paper's ST-CNN Aff): theta is (N, 2, 3)."""

    def identity(self) -> torch.Tensor:
        return torch.tensor(IDENTITY_THETA)

    def to_theta(self, parameters: torch.Tensor) -> torch.Tensor:
        return parameters.view(-1, 2, 3)  # (N, 2, 3)

    def sampling_grid(self, theta: torch.Tensor, size: tuple[int, int, int, int]) -> torch.Tensor:
        return affine_grid(theta, size[2], size[3], self.align_corners)  # (N, H, W, 2)

    def region_corners(self, theta: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        corners = canvas_corners(theta.device, theta.dtype).expand(theta.shape[0], 4, 2)
        return map_points(theta, corners)  # (N, 4, 2)

    def as_matrix(self, theta: torch.Tensor) -> torch.Tensor:
        """theta as (N, 3, 3) homogeneous matrices, so that warps compose by matrix product."""
        last_row = torch.tensor([0.0, 0.0, 1.0], device=theta.device).expand(theta.shape[0], 1, 3)
        return torch.cat([theta, last_row], dim=1)

    def from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix[:, :2]  # (N, 2, 3)


class _NormalisedGridTransformer(WarpingTransformer):
    """Grids built in `grid_sample`'s align_corners=False coordinates (stn/geometry.py)."""

    def __init__(self, localization: nn.Module, align_corners: bool = False, **kwargs) -> None:
        only_false = Allowed(
            lambda v: not v, "false", "its grids are built in align_corners=false coordinates"
        )
        check(self, only_false, align_corners=align_corners)
        super().__init__(localization, align_corners=False, **kwargs)


class ProjectiveTransformer(_NormalisedGridTransformer):
    """An 8-parameter homography: theta is a (N, 3, 3) matrix with theta[2, 2] = 1.

    The two perspective terms (theta[2, :2]) divide every grid coordinate, so a step that moves an
    affine term a little can move the far side of the grid past infinity. They are the head's
    outputs times `perspective_scale`: a smaller step for the same gradient.
    """

    def __init__(self, localization: nn.Module, perspective_scale: float = 0.1, **kwargs) -> None:
        check(self, numbers(above=0), perspective_scale=perspective_scale)
        super().__init__(localization, **kwargs)
        self.perspective_scale = perspective_scale

    def identity(self) -> torch.Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])

    def to_theta(self, parameters: torch.Tensor) -> torch.Tensor:
        affine, perspective = parameters[:, :6], parameters[:, 6:] * self.perspective_scale
        last = torch.ones_like(parameters[:, :1])
        return torch.cat([affine, perspective, last], dim=1).view(-1, 3, 3)  # (N, 3, 3)

    def sampling_grid(self, theta: torch.Tensor, size: tuple[int, int, int, int]) -> torch.Tensor:
        return homography_grid(theta, size[2], size[3])

    def region_corners(self, theta: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        corners = canvas_corners(theta.device, theta.dtype)
        homogeneous = torch.cat([corners, torch.ones_like(corners[:, :1])], dim=1) @ theta.transpose(1, 2)
        return homogeneous[..., :2] / homogeneous[..., 2:]  # (N, 4, 2)

    def as_matrix(self, theta: torch.Tensor) -> torch.Tensor:
        return theta

    def from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix / matrix[:, 2:, 2:]  # (N, 3, 3) with h33 = 1


class ThinPlateSplineTransformer(_NormalisedGridTransformer):
    """A thin-plate spline through `points_per_side`^2 control points on a square grid: theta is
    where each control point samples the input, (N, K, 2), starting at the points themselves."""

    def __init__(self, localization: nn.Module, points_per_side: int = 4, **kwargs) -> None:
        check(self, integers(2), points_per_side=points_per_side)
        control = control_grid(points_per_side)  # (K, 2)
        super().__init__(localization, identity=control.flatten(), **kwargs)
        self.points_per_side = points_per_side
        self.register_buffer("control", control, persistent=False)
        # the spline's linear system depends on the control points only: invert it once
        self.register_buffer("system_inverse", torch.linalg.inv(tps_system(control)), persistent=False)

    def identity(self) -> torch.Tensor:
        return control_grid(self.points_per_side).flatten()

    def to_theta(self, parameters: torch.Tensor) -> torch.Tensor:
        return parameters.view(parameters.shape[0], -1, 2)  # (N, K, 2)

    def sampling_grid(self, theta: torch.Tensor, size: tuple[int, int, int, int]) -> torch.Tensor:
        count = self.control.shape[0]
        coefficients = self.system_inverse[:, :count] @ theta  # (N, K + 3, 2)
        return tps_grid(self.control, coefficients, size[2], size[3])


class _InverseCompositional:
    """The inverse compositional STN (Lin and Lucey, CVPR 2017): the same localization net applied
    `recurrences` times, each time to the original image warped by the transform so far; its
    output is an update composed onto that transform (a matrix product), and the original is
    resampled once, at the end, with the composed transform. The parameter count is the plain
    transformer's, and at initialisation every update is the identity, so the whole is too."""

    def __init__(self, localization: nn.Module, recurrences: int = 4, **kwargs) -> None:
        check(self, integers(1), recurrences=recurrences)
        super().__init__(localization, **kwargs)
        self.recurrences = recurrences

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        matrix = torch.eye(3, device=images.device).expand(images.shape[0], 3, 3)  # (N, 3, 3)
        for step in range(self.recurrences):
            # what the localization net sees: the original warped so far, at its own size
            seen = images if step == 0 else self.warp(images, self.from_matrix(matrix), images.shape[-2:])
            update = self.as_matrix(self.to_theta(self.head(self.localization(seen))))  # (N, 3, 3)
            matrix = matrix @ update  # first the update, then the transform so far
        theta = self.from_matrix(matrix)
        return self.warp(images, theta), theta


class InverseCompositionalTransformer(_InverseCompositional, SpatialTransformer):
    """The inverse compositional STN with affine warps (`model=ic_stn`)."""


class InverseCompositionalProjectiveTransformer(_InverseCompositional, ProjectiveTransformer):
    """The inverse compositional STN with projective warps (`model=ic_stn_proj`)."""
