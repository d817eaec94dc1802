"""The distorted-MNIST generators and the grid geometry under them, on real MNIST digits."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import open_dict

from stn.data import DistortedMNISTDataModule, MNISTDataModule
from stn.data.distortions import (
    DISTORTION_CLASSES,
    Cluttered,
    Elastic,
    Projective,
    Rotation,
    RotationScaleTranslation,
    _convex_same_orientation,
)
from stn.errors import ConfigError
from stn.geometry import (
    affine_theta,
    control_grid,
    homography_from_points,
    homography_grid,
    pixel_centres,
    sample,
    tps_coefficients,
    tps_grid,
)

from .conftest import check_and_build, compose_config


@pytest.fixture(scope="module")
def digits(mnist_dir: Path) -> torch.Tensor:
    """256 real training digits in [0, 1], (256, 1, 28, 28)."""
    datamodule = MNISTDataModule(data_dir=str(mnist_dir), train_subset=256)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.train_set.images.float() / 255


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def identity_grid(size: int) -> torch.Tensor:
    return pixel_centres(size, size).view(1, size, size, 2)


def test_identity_warps_return_the_image(digits: torch.Tensor):
    zero, one = torch.zeros(4), torch.ones(4)
    theta = affine_theta(zero, one, torch.zeros(4, 2), 28, 28)
    affine = F.affine_grid(theta, (4, 1, 28, 28), align_corners=False)
    assert torch.allclose(affine, identity_grid(28).expand(4, -1, -1, -1), atol=1e-6)
    corners = control_grid(2).expand(4, 4, 2)
    assert torch.allclose(
        homography_grid(homography_from_points(corners, corners), 28, 28), affine, atol=1e-5
    )
    control = control_grid(4)
    tps = tps_grid(control, tps_coefficients(control, control.expand(4, -1, -1)), 28, 28)
    assert torch.allclose(tps, affine, atol=1e-4)
    assert torch.allclose(sample(digits[:4], affine), digits[:4], atol=1e-5)


def test_homography_and_spline_pass_through_their_points():
    corners, generator = control_grid(2), seeded(0)
    source = corners + 0.2 * torch.randn(3, 4, 2, generator=generator)  # four well-spread points
    target = 0.8 * corners + 0.2 * torch.randn(3, 4, 2, generator=generator)
    homography = homography_from_points(source, target)
    mapped = torch.cat([source, torch.ones(3, 4, 1)], -1) @ homography.transpose(1, 2)
    assert torch.allclose(mapped[..., :2] / mapped[..., 2:], target, atol=1e-4)
    control = control_grid(4)
    moved = control + 0.05 * torch.randn(2, 16, 2)
    coefficients = tps_coefficients(control, moved)
    basis_at_control = tps_grid(control, coefficients, 4, 4)  # 4x4 pixel centres are not the controls
    assert basis_at_control.shape == (2, 4, 4, 2)
    kernel = (control[:, None] - control).pow(2).sum(-1)
    kernel = kernel * torch.log(kernel.clamp_min(1e-12))
    basis = torch.cat([kernel, torch.ones(16, 1), control], dim=1)
    assert torch.allclose(basis @ coefficients, moved, atol=1e-4)


def test_rotation_by_90_degrees_is_rot90(digits: torch.Tensor):
    rotated, params = Rotation(degrees=(90, 90))(digits[:8], seeded(0))
    assert torch.allclose(params["degrees"], torch.full((8,), 90.0))
    candidates = [torch.rot90(digits[:8], k, dims=(2, 3)) for k in (1, -1)]
    assert min((rotated - c).abs().max().item() for c in candidates) < 1e-4


def test_placement_keeps_the_digit_whole(digits: torch.Tensor):
    placed, params = RotationScaleTranslation(degrees=(0, 0), scale=(1, 1), canvas_size=42)(digits, seeded(0))
    assert placed.shape == (256, 1, 42, 42)
    assert params["translation"].abs().max() <= 7  # (42 - 28) / 2
    # nothing falls off the canvas: the ink is conserved (bilinear sampling spreads, not loses it)
    assert torch.allclose(placed.sum((1, 2, 3)), digits.sum((1, 2, 3)), rtol=0.02)
    cluttered, where = Cluttered(clutter_pieces=0)(digits, seeded(0))
    top, left = where["digit_top"][5].item(), where["digit_left"][5].item()
    assert torch.equal(cluttered[5, :, top : top + 28, left : left + 28], digits[5])
    assert cluttered[5].sum() == digits[5].sum()


@pytest.mark.parametrize("name", sorted(DISTORTION_CLASSES))
def test_each_variant_is_seeded_and_stays_in_its_ranges(name: str, digits: torch.Tensor):
    distortion = DISTORTION_CLASSES[name]()
    images, params = distortion(digits, seeded(1))
    again, _ = distortion(digits, seeded(1))
    other, _ = distortion(digits, seeded(2))
    size = distortion.canvas_size
    assert images.shape == (256, 1, size, size)
    assert torch.equal(images, again)  # same seed, same test set
    assert not torch.equal(images, other)
    assert images.min() >= 0 and images.max() <= 1 + 1e-6
    # the digit is still there: its ink scales with its area (down to 0.7^2 in RTS; a homography
    # with corners moved inwards by 2 std shrinks it to a few pixels), but never vanishes
    assert (images.sum((1, 2, 3)) > 0.02 * digits.sum((1, 2, 3))).all()

    if "degrees" in params:
        low, high = distortion.degrees
        assert low <= params["degrees"].min() and params["degrees"].max() <= high
        assert params["degrees"].max() - params["degrees"].min() > 0.8 * (high - low)  # spread, not stuck
    if "scale" in params:
        low, high = distortion.scale
        assert low <= params["scale"].min() and params["scale"].max() <= high
    for key, std in (("corner_shift_px", 5 / 2**0.5), ("control_shift_px", 1.5)):
        if key in params:
            assert 0.85 * std < params[key].std().item() < 1.15 * std
            assert params[key].mean().abs().item() < 0.2 * std
    if "digit_top" in params:
        for key in ("digit_top", "digit_left"):
            assert 0 <= params[key].min() and params[key].max() <= size - 28
        assert (params["clutter_source"] != torch.arange(256)[:, None]).all()  # crops of other digits
        assert 0 <= params["clutter_top"].min() and params["clutter_top"].max() <= size - 6


def test_projective_corners_never_fold_the_digit_over(digits: torch.Tensor):
    _, params = Projective()(digits, seeded(3))
    corners = control_grid(2) * params["scale"][:, None, None] + params["corner_shift_px"] * 2 / 28
    assert _convex_same_orientation(corners).all()
    assert not _convex_same_orientation(
        torch.tensor([[[-1.0, -1], [1, -1], [1, 1], [-1, 1]]])
    )  # a folded one


def test_projective_leaves_the_digit_readable(mnist_dir: Path):
    """P squeezes few digits into slivers: at most 1% keep under 30% of their ink (against the ink
    their drawn scale leaves them). Read as 5 px along each axis, the paper's corner noise squeezes
    over 2% (3.4% on these digits): an error floor above the paper's CNN on P (1.5%)."""
    datamodule = MNISTDataModule(data_dir=str(mnist_dir), train_subset=4000)
    datamodule.prepare_data()
    datamodule.setup("fit")
    digits = datamodule.train_set.images.float() / 255  # (4000, 1, 28, 28)

    def squeezed(distortion: Projective) -> float:
        images, params = distortion(digits, seeded(5))
        ink_kept = images.sum((1, 2, 3)) / digits.sum((1, 2, 3)) / params["scale"] ** 2
        return (ink_kept < 0.3).float().mean().item()

    assert squeezed(Projective()) <= 0.01
    assert squeezed(Projective(corner_std_px=5.0)) > 0.02


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: RotationScaleTranslation(scale=(1.2, 0.7)),
            r"^scale=\[1.2, 0.7\] is inverted",
        ),
        (lambda: Rotation(degrees=(90, -90)), r"^degrees=\[90.*-90.*\] is inverted"),
        (lambda: Projective(corner_std_px=-1), r"^corner_std_px=-1 is out of range"),
        (lambda: Elastic(points_per_side=1), r"^points_per_side=1 is out of range"),
        (lambda: Cluttered(canvas_size=20), r"^canvas_size=20 is out of range: allowed integers >= 28"),
    ],
)
def test_bad_ranges_name_the_key(make, message: str):
    with pytest.raises(ValueError, match=message):
        make()


def distorted(mnist_dir: Path, variant: str, **overrides) -> DistortedMNISTDataModule:
    cfg = compose_config("train.yaml", [f"data=mnist_{variant}"])
    with open_dict(cfg):
        cfg.data.data_dir = str(mnist_dir)
        cfg.data.train_subset, cfg.data.test_subset = 512, 300
        cfg.data.shuffle_seed = 0
        cfg.data.update(overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


# each variant distorts its fixed sets (seconds): RTS in the fast lane, the others in the whole suite
@pytest.mark.parametrize(
    "variant",
    ["rts", *(pytest.param(v, marks=pytest.mark.slow) for v in ("rot", "proj", "elastic", "cluttered"))],
)
def test_distorted_datamodule_fixes_its_test_set_and_redraws_training_batches(variant: str, mnist_dir: Path):
    first, again = distorted(mnist_dir, variant), distorted(mnist_dir, variant)
    size = first.distortion.canvas_size
    assert first.test_set.images.shape == (300, 1, size, size) and first.test_set.images.dtype == torch.uint8
    assert torch.equal(first.test_set.images, again.test_set.images)  # every model, the same images
    assert torch.equal(first.val_set.images, again.val_set.images)
    assert not torch.equal(first.test_set.images, distorted(mnist_dir, variant, test_seed=7).test_set.images)

    loader = first.train_dataloader()
    epoch_0 = [images for images, _ in _epoch(loader, 0)]
    assert epoch_0[0].shape == (64, 1, size, size)
    assert torch.equal(epoch_0[0], next(iter(_epoch(loader, 0)))[0])  # reproducible
    assert not torch.equal(epoch_0[0], next(iter(_epoch(loader, 1)))[0])  # a fresh draw each epoch
    background = -first.hparams.mean / first.hparams.std
    assert epoch_0[0].min().item() == pytest.approx(background, abs=1e-5)  # normalised like MNIST


def _epoch(loader, epoch: int):
    loader.sampler.set_epoch(epoch)
    return loader


def test_inverted_distortion_range_is_rejected_at_start():
    cfg = compose_config("train.yaml", ["data=mnist_rts", "data.distortion.scale=[1.2,0.7]"])
    with pytest.raises(
        ConfigError, match=r"^data.distortion.scale=\[1.2, 0.7\] is inverted: min must be <= max"
    ):
        check_and_build(cfg)
    cfg = compose_config("train.yaml", ["data=mnist_rot", "data.fast_path=false"])
    with pytest.raises(ConfigError, match="^data.fast_path=False is out of range"):
        check_and_build(cfg)
    cfg = compose_config("train.yaml", ["data=mnist_rot", "data.distortion.degrees=[-200,90]"])
    with pytest.raises(ConfigError, match=r"^data.distortion.degrees=\[-200, 90\] is out of range"):
        check_and_build(cfg)


# The paper's definitions (Jaderberg et al. 2015, sec. 4.1 and appendix A.4), written out here
# rather than read from the code, so a config that drifts from the paper fails: per `data=`, the
# distortion's class, its canvas and its ranges.
PAPER_DISTORTIONS = {
    "rot": (Rotation, 28, {"degrees": (-90.0, 90.0)}),
    "rts": (RotationScaleTranslation, 42, {"degrees": (-45.0, 45.0), "scale": (0.7, 1.2)}),
    # 5 px is the length of a corner's move: 5/sqrt(2) px along each axis (Projective's docstring)
    "proj": (Projective, 28, {"scale": (0.75, 1.0), "corner_std_px": 5 / 2**0.5}),
    "elastic": (Elastic, 28, {"points_per_side": 4, "control_std_px": 1.5}),  # 16 control points
    "cluttered": (Cluttered, 60, {"clutter_pieces": 6, "piece_size": 6}),
}


@pytest.mark.parametrize("variant", sorted(PAPER_DISTORTIONS))
def test_each_data_config_is_the_papers_distortion(variant: str, digits: torch.Tensor):
    cls, canvas, ranges = PAPER_DISTORTIONS[variant]
    cfg = compose_config("train.yaml", [f"data=mnist_{variant}"])
    distortion = instantiate(cfg.data.distortion)
    assert type(distortion) is cls
    assert distortion.canvas_size == canvas == cfg.data.image_size
    for key, value in ranges.items():
        assert getattr(distortion, key) == pytest.approx(value), key
    # what it draws stays in the paper's ranges and fills them
    _, params = distortion(digits, seeded(4))
    for key in ("degrees", "scale"):
        if key in ranges:
            low, high = ranges[key]
            assert low <= params[key].min() and params[key].max() <= high
            assert params[key].max() - params[key].min() > 0.8 * (high - low)
    if "digit_top" in params:  # anywhere on the canvas the whole digit fits
        assert params["digit_top"].max() > 0.8 * (canvas - 28) and params["digit_top"].min() < 0.2 * (
            canvas - 28
        )


def test_augmentation_draws_within_its_ranges_and_moves_the_digit_by_its_shift(digits: torch.Tensor):
    from stn.data.distortions import Augmentation

    augment = Augmentation(max_shift_px=4, degrees=(-30, 30), scale=(0.9, 1.1))
    generator = torch.Generator().manual_seed(0)
    moved, params = augment(digits, generator)
    assert moved.shape == digits.shape
    assert params["degrees"].abs().max() <= 30 and params["degrees"].abs().max() > 25  # fills the range
    assert params["translation"].abs().max() <= 4 and params["translation"].abs().max() > 3.5
    assert 0.9 <= params["scale"].min() and params["scale"].max() <= 1.1
    # a pure shift moves each digit's centre of mass by its drawn translation, in pixels
    shift_only = Augmentation(max_shift_px=4, degrees=(0, 0), scale=(1, 1))
    shifted, drawn = shift_only(digits, torch.Generator().manual_seed(1))

    def centre(images: torch.Tensor) -> torch.Tensor:  # (N, 2) x, y in pixels
        grid = torch.arange(28, dtype=torch.float32)
        mass = images.sum(dim=(1, 2, 3))
        x = (images.sum(dim=(1, 2)) * grid).sum(dim=1) / mass
        y = (images.sum(dim=(1, 3)) * grid).sum(dim=1) / mass
        return torch.stack([x, y], dim=1)

    error = (centre(shifted) - centre(digits) - drawn["translation"]).abs()
    assert float(error.median()) < 0.2  # a digit pushed against the edge loses a little ink
    identity = Augmentation(max_shift_px=0, degrees=(0, 0), scale=(1, 1))
    assert torch.allclose(identity(digits, generator)[0], digits, atol=1e-5)
    assert torch.allclose(Augmentation(probability=0.0)(digits, generator)[0], digits, atol=1e-5)
    half, drawn = Augmentation(probability=0.5)(digits, generator)
    untouched = (half - digits).abs().flatten(1).amax(dim=1) < 1e-5  # (N,)
    assert 0.35 < float(untouched.float().mean()) < 0.65
    assert torch.all(drawn["degrees"][untouched] == 0) and torch.all(drawn["scale"][untouched] == 1)


def test_augmented_training_batches_move_and_evaluation_batches_do_not(mnist_dir: Path):
    cfg = compose_config("train.yaml", ["data/augment=standard", f"data.data_dir={mnist_dir}"])
    with open_dict(cfg):
        cfg.data.train_subset, cfg.data.test_subset = 256, 64
    plain, augmented = (instantiate(cfg.data, augment=None), instantiate(cfg.data))
    for datamodule in (plain, augmented):
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.setup("test")
    first = next(iter(augmented.train_dataloader()))[0]
    assert not torch.allclose(first, next(iter(plain.train_dataloader()))[0])
    assert torch.equal(next(iter(augmented.test_dataloader()))[0], next(iter(plain.test_dataloader()))[0])
    with pytest.raises(
        ConfigError, match="data.augment=.* is out of range: allowed null on a distorted variant"
    ):
        check_and_build(compose_config("train.yaml", ["data=mnist_rts", "data/augment=standard"]))
