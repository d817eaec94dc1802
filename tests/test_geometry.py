"""The sampler pinned to its references, as kornia tests its warps: `geometry.affine_grid` (which
replaces `F.affine_grid` for export) against PyTorch's over random theta, sizes and both
`align_corners`; gradients of every grid through `grid_sample` checked in float64 with
`torch.autograd.gradcheck`; and the point maps that place the sampled region in input pixels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stn.geometry import (
    affine_grid,
    canvas_corners,
    control_grid,
    homography_grid,
    invert_affine,
    map_points,
    sampled_region,
    to_pixels,
    tps_coefficients,
    tps_grid,
)
from stn.models import (
    LocalizationNet,
    ProjectiveTransformer,
    SpatialTransformer,
    ThinPlateSplineTransformer,
)


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior has changed")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (28, 28), (42, 30)])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_affine_grid_is_pytorchs_over_random_theta(
    size: tuple[int, int], align_corners: bool, dtype: torch.dtype, tolerance: float
):
    generator = torch.Generator().manual_seed(hash(size) % 1000 + align_corners)
    theta = torch.randn(6, 2, 3, generator=generator, dtype=dtype)  # (N, 2, 3): far from the identity too
    height, width = size
    ours = affine_grid(theta, height, width, align_corners)
    reference = F.affine_grid(theta, (6, 1, height, width), align_corners=align_corners)
    assert ours.shape == reference.shape == (6, height, width, 2) and ours.dtype == dtype
    torch.testing.assert_close(ours, reference, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_the_affine_transformer_samples_as_pytorch_does(
    align_corners: bool, dtype: torch.dtype, tolerance: float
):
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(4, 1, 12, 12, generator=generator, dtype=dtype)
    theta = torch.eye(2, 3, dtype=dtype) + 0.2 * torch.randn(4, 2, 3, generator=generator, dtype=dtype)
    transformer = SpatialTransformer(
        LocalizationNet(), align_corners=align_corners, pad_with_background=False
    ).to(dtype)
    reference = F.grid_sample(
        images, F.affine_grid(theta, images.shape, align_corners=align_corners), align_corners=align_corners
    )
    torch.testing.assert_close(transformer.warp(images, theta), reference, atol=tolerance, rtol=tolerance)


def _warped(grid_of):
    """images, parameters -> grid_sample(images, grid_of(parameters)): what gradcheck checks."""

    def warp(images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        grid = grid_of(parameters)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return warp


def _gradcheck(warp, parameters: torch.Tensor) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(warp, (images, parameters.requires_grad_()), eps=1e-6, atol=1e-4)


def test_affine_grid_gradients_through_grid_sample():
    generator = torch.Generator().manual_seed(1)
    theta = torch.eye(2, 3, dtype=torch.float64) + 0.1 * torch.randn(2, 2, 3, generator=generator).double()
    _gradcheck(_warped(lambda theta: affine_grid(theta, 4, 5)), theta)


def test_homography_grid_gradients_through_grid_sample():
    generator = torch.Generator().manual_seed(2)
    homography = torch.eye(3, dtype=torch.float64) + 0.05 * torch.randn(2, 3, 3, generator=generator).double()
    _gradcheck(_warped(lambda matrix: homography_grid(matrix, 4, 5)), homography)


def test_tps_grid_gradients_through_grid_sample():
    control = control_grid(3).double()  # (9, 2)
    generator = torch.Generator().manual_seed(4)
    target = control + 0.05 * torch.randn(2, 9, 2, generator=generator).double()  # (N, K, 2)

    def grid_of(target: torch.Tensor) -> torch.Tensor:
        return tps_grid(control, tps_coefficients(control, target), 4, 5)

    _gradcheck(_warped(grid_of), target)


def test_only_matrix_transformers_compose_as_matrices():
    """The spline is not a matrix: it must not inherit the affine `as_matrix` / `from_matrix`."""
    assert hasattr(SpatialTransformer, "as_matrix") and hasattr(ProjectiveTransformer, "from_matrix")
    assert not hasattr(ThinPlateSplineTransformer, "as_matrix")
    assert not hasattr(ThinPlateSplineTransformer, "from_matrix")


# -- the sampled region in input pixels --


def test_the_identity_maps_the_canvas_corners_to_the_canvas():
    identity = torch.eye(2, 3).unsqueeze(0)  # (1, 2, 3)
    corners = sampled_region(identity, 42, 28)  # (1, 4, 2), (x, y) in pixels
    expected = torch.tensor([[0.0, 0.0], [28.0, 0.0], [28.0, 42.0], [0.0, 42.0]])
    torch.testing.assert_close(corners[0], expected)


def test_a_known_shift_and_scale_map_where_they_should():
    # half the size, centred 0.5 to the right and 0.25 down (normalised): on a 40x40 canvas the
    # region is 20 px wide, its centre at (20 + 10, 20 + 5) px
    theta = torch.tensor([[[0.5, 0.0, 0.5], [0.0, 0.5, 0.25]]])
    corners = sampled_region(theta, 40, 40)[0]
    expected = torch.tensor([[20.0, 15.0], [40.0, 15.0], [40.0, 35.0], [20.0, 35.0]])
    torch.testing.assert_close(corners, expected)
    # and it is where grid_sample reads: the region's centre is the grid's centre
    grid = affine_grid(theta, 2, 2)  # (1, 2, 2, 2): four pixel centres around the middle
    torch.testing.assert_close(to_pixels(grid.mean(dim=(1, 2)), 40, 40), torch.tensor([[30.0, 25.0]]))


def test_a_round_trip_through_the_inverse_returns_the_points():
    generator = torch.Generator().manual_seed(5)
    theta = torch.eye(2, 3) + 0.3 * torch.randn(8, 2, 3, generator=generator)
    points = torch.rand(8, 10, 2, generator=generator) * 2 - 1
    back = map_points(invert_affine(theta), map_points(theta, points))
    torch.testing.assert_close(back, points, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        map_points(invert_affine(invert_affine(theta)), points), map_points(theta, points)
    )
    assert canvas_corners().shape == (4, 2)


def test_each_transformer_says_which_region_it_sampled():
    generator = torch.Generator().manual_seed(5)
    theta = torch.eye(2, 3) + 0.1 * torch.randn(2, 2, 3, generator=generator)  # (N, 2, 3)
    affine = SpatialTransformer(LocalizationNet())
    torch.testing.assert_close(
        to_pixels(affine.region_corners(theta, (28, 28)), 28, 28), sampled_region(theta, 28, 28)
    )
    projective = ProjectiveTransformer(LocalizationNet())
    identity = projective.to_theta(projective.identity()[None])  # (1, 3, 3)
    torch.testing.assert_close(projective.region_corners(identity, (28, 28))[0], canvas_corners())
    shifted = identity.clone()
    shifted[:, 0, 2] = 0.5  # half a canvas to the right
    torch.testing.assert_close(
        projective.region_corners(shifted, (28, 28))[0], canvas_corners() + torch.tensor([0.5, 0])
    )
    spline = ThinPlateSplineTransformer(LocalizationNet())
    corners = spline.region_corners(spline.to_theta(spline.identity()[None]), (4, 4))[
        0
    ]  # the corner pixels' centres
    torch.testing.assert_close(corners, 0.75 * canvas_corners(), atol=1e-5, rtol=1e-5)


def test_pixels_from_normalised_points_for_both_conventions():
    corners = canvas_corners()
    torch.testing.assert_close(
        to_pixels(corners, 10, 20), torch.tensor([[0.0, 0], [20, 0], [20, 10], [0, 10]])
    )
    # align_corners=True: -1 and 1 are the corner pixels' centres
    expected = torch.tensor([[0.5, 0.5], [19.5, 0.5], [19.5, 9.5], [0.5, 9.5]])
    torch.testing.assert_close(to_pixels(corners, 10, 20, align_corners=True), expected)
