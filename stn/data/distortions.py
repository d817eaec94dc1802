"""The distorted MNIST variants of the STN paper (Jaderberg et al., 2015, section 4.1), generated in
batches on the images' device with `grid_sample`, never per image.

Each distortion takes (N, 1, 28, 28) images in [0, 1] (background 0) and a `torch.Generator` on
the same device, and returns the distorted (N, 1, S, S) images on an S x S canvas together with
the parameters it drew (for tests and inspection). The same generator state gives the same
images, so a seeded generator gives a fixed test set.

  R    Rotation: rotation uniformly in +-90 degrees.
  RTS  RotationScaleTranslation: rotation +-45 degrees, scale 0.7-1.2, placed at a random
       position in a 42x42 canvas.
  P    Projective: scale 0.75-1.0, then each corner moved 5 px (root mean square of the move's
       length: N(0, 5/sqrt(2) px) along each axis): a random homography.
  E    Elastic: a thin-plate spline through 16 control points on a 4x4 grid, each moved by
       N(0, 1.5 px).
  TC   Cluttered: the digit at a random position in a 60x60 canvas with 6 random 6x6 crops of
       other digits as clutter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from stn.errors import check, check_range, integers, numbers
from stn.geometry import (
    affine_theta,
    control_grid,
    homography_from_points,
    homography_grid,
    sample,
    tps_coefficients,
    tps_grid,
)

MNIST_SIZE = 28
Params = dict[str, torch.Tensor]


def _uniform(count: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(count, generator=generator, device=generator.device)


def _normal(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    return std * torch.randn(shape, generator=generator, device=generator.device)


class Distortion:
    """What every variant has: the canvas it draws on, and a call that distorts a batch."""

    name = "identity"
    canvas_size = MNIST_SIZE

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Params]:
        raise NotImplementedError


class RotationScaleTranslation(Distortion):
    """Rotation, scale and placement on a canvas; with the defaults of `Rotation` it is R, with
    the RTS defaults it is RTS."""

    name = "rts"

    def __init__(
        self,
        degrees: Sequence[float] = (-45.0, 45.0),
        scale: Sequence[float] = (0.7, 1.2),
        canvas_size: int = 42,
    ) -> None:
        self.degrees = check_range(self, -180, 180, degrees=degrees)
        self.scale = check_range(self, 1e-3, scale=scale)
        self.canvas_size = check(self, integers(MNIST_SIZE), canvas_size=canvas_size)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Params]:
        count = images.shape[0]
        angle = torch.deg2rad(_uniform(count, self.degrees, generator))
        scale = _uniform(count, self.scale, generator)
        # the digit's box (28 * scale) stays inside the canvas; a canvas too small for it: centred
        room = ((self.canvas_size - MNIST_SIZE * scale) / 2).clamp_min(0)  # (N,) pixels either side
        unit = 2 * torch.rand(count, 2, generator=generator, device=generator.device) - 1  # (N, 2) in [-1, 1)
        translation = unit * room[:, None]
        theta = affine_theta(angle, scale, translation, MNIST_SIZE, self.canvas_size)  # (N, 2, 3)
        size = (count, images.shape[1], self.canvas_size, self.canvas_size)
        grid = torch.nn.functional.affine_grid(theta, size, align_corners=False)
        params = {"degrees": torch.rad2deg(angle), "scale": scale, "translation": translation}
        return sample(images, grid), params


class Augmentation(Distortion):
    """On-the-fly augmentation of MNIST itself (28x28): a random shift of up to `max_shift_px`
    pixels in each direction, a rotation in `degrees` and a scale in `scale`, drawn per image on the
    training device, each digit with `probability` (the others are left as they are). Clean MNIST
    never shows a spatial transformer a shifted or turned digit, so it
    has nothing to learn to undo; this does (`data.augment`, off by default)."""

    name = "augment"

    def __init__(
        self,
        max_shift_px: float = 4.0,
        degrees: Sequence[float] = (-30.0, 30.0),
        scale: Sequence[float] = (0.9, 1.1),
        probability: float = 1.0,
    ) -> None:
        self.probability = float(check(self, numbers(0, 1), probability=probability))
        self.max_shift_px = float(check(self, numbers(0), max_shift_px=max_shift_px))
        self.degrees = check_range(self, -180, 180, degrees=degrees)
        self.scale = check_range(self, 1e-3, scale=scale)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Params]:
        count = images.shape[0]
        angle = torch.deg2rad(_uniform(count, self.degrees, generator))
        scale = _uniform(count, self.scale, generator)
        unit = 2 * torch.rand(count, 2, generator=generator, device=generator.device) - 1  # (N, 2) in [-1, 1)
        translation = unit * self.max_shift_px  # (N, 2) pixels
        # each digit is moved with `probability`, else left as it is (the identity)
        moved = torch.rand(count, generator=generator, device=generator.device) < self.probability  # (N,)
        angle, scale = torch.where(moved, angle, 0.0), torch.where(moved, scale, 1.0)
        translation = torch.where(moved[:, None], translation, 0.0)
        theta = affine_theta(angle, scale, translation, MNIST_SIZE, MNIST_SIZE)  # (N, 2, 3)
        grid = torch.nn.functional.affine_grid(theta, tuple(images.shape), align_corners=False)
        params = {"degrees": torch.rad2deg(angle), "scale": scale, "translation": translation}
        return sample(images, grid), params


class Rotation(RotationScaleTranslation):
    """R: rotation only, uniformly in +-90 degrees, on the 28x28 image."""

    name = "rot"

    def __init__(self, degrees: Sequence[float] = (-90.0, 90.0)) -> None:
        super().__init__(degrees=degrees, scale=(1.0, 1.0), canvas_size=MNIST_SIZE)


def _convex_same_orientation(corners: torch.Tensor) -> torch.Tensor:
    """(N,) whether each (N, 4, 2) quadrilateral (corners in `control_grid(2)` order) is convex
    and not mirrored: every turn along its outline has the sign of the unit square's."""
    outline = corners[:, [0, 1, 3, 2]]  # around the square
    edges = outline.roll(-1, dims=1) - outline  # (N, 4, 2)
    turns = edges[..., 0] * edges.roll(-1, dims=1)[..., 1] - edges[..., 1] * edges.roll(-1, dims=1)[..., 0]
    return (turns > 0).all(dim=1)


class Projective(Distortion):
    """P: the digit scaled down, then its four corners moved independently: a random homography.

    `corner_std_px` is the standard deviation along each axis. The paper's "5 px" is read as the
    typical length of a corner's move (5/sqrt(2) px along each axis): read as 5 px along each
    axis (a 7 px move), 3.4% of the digits keep under 30% of their ink, squeezed into slivers no
    one can read, an error floor above the paper's CNN (1.5%) and ST-CNN (0.8%) on P; at
    5/sqrt(2) px 0.35% do (`tests/test_distortions.py`, docs/paper.md).
    """

    name = "proj"
    redraws = 8

    def __init__(self, scale: Sequence[float] = (0.75, 1.0), corner_std_px: float = 5 / math.sqrt(2)) -> None:
        self.scale = check_range(self, 1e-3, scale=scale)
        self.corner_std_px = float(check(self, numbers(0), corner_std_px=corner_std_px))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Params]:
        count = images.shape[0]
        scale = _uniform(count, self.scale, generator)
        image_corners = control_grid(2, device=images.device)  # (4, 2): the input's corners
        scaled_corners = image_corners * scale[:, None, None]  # (N, 4, 2)
        std = self.corner_std_px * 2 / MNIST_SIZE  # pixels -> normalised units
        shift = _normal((count, 4, 2), std, generator)
        # a quadrilateral that folds over (a corner crossing an edge) is not a view of the digit:
        # draw those corners again (a few rounds, then leave that one undistorted)
        for attempt in range(self.redraws + 1):
            folded = ~_convex_same_orientation(scaled_corners + shift)
            if attempt == self.redraws:
                shift[folded] = 0.0
            elif folded.any():
                shift = torch.where(folded[:, None, None], _normal((count, 4, 2), std, generator), shift)
        drawn_corners = scaled_corners + shift  # where they land in the output
        # output -> input: the drawn corners sample the image's corners
        homography = homography_from_points(drawn_corners, image_corners.expand(count, 4, 2))
        grid = homography_grid(homography, MNIST_SIZE, MNIST_SIZE)
        params = {"scale": scale, "corner_shift_px": shift * MNIST_SIZE / 2}
        return sample(images, grid), params


class Elastic(Distortion):
    """E: a thin-plate spline through a grid of control points, each moved by N(0, std px)."""

    name = "elastic"

    def __init__(self, points_per_side: int = 4, control_std_px: float = 1.5) -> None:
        self.points_per_side = check(self, integers(2), points_per_side=points_per_side)
        self.control_std_px = float(check(self, numbers(0), control_std_px=control_std_px))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Params]:
        count = images.shape[0]
        # control points at the pixel centres of a grid spanning the digit area
        control = control_grid(self.points_per_side, extent=1 - 1 / MNIST_SIZE, device=images.device)
        shift = _normal((count, control.shape[0], 2), self.control_std_px * 2 / MNIST_SIZE, generator)
        coefficients = tps_coefficients(control, control + shift)  # (N, K + 3, 2)
        grid = tps_grid(control, coefficients, MNIST_SIZE, MNIST_SIZE)
        return sample(images, grid), {"control_shift_px": shift * MNIST_SIZE / 2}


class Cluttered(Distortion):
    """TC: the digit at a random position on a larger canvas, with random crops of other digits
    (the other images of the batch) scattered over it as clutter."""

    name = "cluttered"

    def __init__(self, canvas_size: int = 60, clutter_pieces: int = 6, piece_size: int = 6) -> None:
        self.canvas_size = check(self, integers(MNIST_SIZE), canvas_size=canvas_size)
        self.piece_size = check(self, integers(1, MNIST_SIZE), piece_size=piece_size)
        self.clutter_pieces = check(self, integers(0), clutter_pieces=clutter_pieces)

    def _paste(
        self, canvas: torch.Tensor, pieces: torch.Tensor, top: torch.Tensor, left: torch.Tensor
    ) -> None:
        """Max-blend (N, P, h, w) pieces into the (N, S * S) canvas at (N, P) top-left corners."""
        rows = top[..., None] + torch.arange(pieces.shape[-2], device=canvas.device)  # (N, P, h)
        cols = left[..., None] + torch.arange(pieces.shape[-1], device=canvas.device)  # (N, P, w)
        flat = rows[..., :, None] * self.canvas_size + cols[..., None, :]  # (N, P, h, w)
        canvas.scatter_reduce_(1, flat.flatten(1), pieces.flatten(1), reduce="amax")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Params]:
        count, device = images.shape[0], images.device
        size, piece, pieces = self.canvas_size, self.piece_size, self.clutter_pieces

        def integers(high: int, shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randint(high + 1, shape, generator=generator, device=generator.device)

        canvas = images.new_zeros(count, size * size)
        digit_top, digit_left = (
            integers(size - MNIST_SIZE, (count, 1)),
            integers(size - MNIST_SIZE, (count, 1)),
        )
        params = {"digit_top": digit_top[:, 0], "digit_left": digit_left[:, 0]}
        if pieces and count > 1:
            # crops of *other* digits: shift each source index by 1..N-1 within the batch
            source = (
                torch.arange(count, device=device)[:, None] + 1 + integers(count - 2, (count, pieces))
            ) % count
            crop_top, crop_left = (
                integers(MNIST_SIZE - piece, (count, pieces)),
                integers(MNIST_SIZE - piece, (count, pieces)),
            )
            rows = crop_top[..., None] + torch.arange(piece, device=device)  # (N, P, piece)
            cols = crop_left[..., None] + torch.arange(piece, device=device)
            crops = images[:, 0][
                source[..., None, None], rows[..., :, None], cols[..., None, :]
            ]  # (N, P, p, p)
            clutter_top, clutter_left = (
                integers(size - piece, (count, pieces)),
                integers(size - piece, (count, pieces)),
            )
            self._paste(canvas, crops, clutter_top, clutter_left)
            params.update(clutter_source=source, clutter_top=clutter_top, clutter_left=clutter_left)
        self._paste(canvas, images[:, :1], digit_top, digit_left)  # the digit itself, on top
        return canvas.view(count, 1, size, size), params


DISTORTION_CLASSES: dict[str, type[Distortion]] = {  # by their `name`
    cls.name: cls for cls in (Rotation, RotationScaleTranslation, Projective, Elastic, Cluttered)
}
