import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from stn.models import (
    ConvClassifier,
    FullyConnectedClassifier,
    FullyConnectedLocalization,
    InverseCompositionalProjectiveTransformer,
    InverseCompositionalTransformer,
    LocalizationNet,
    ProjectiveTransformer,
    SpatialTransformer,
    STNClassifier,
    ThinPlateSplineTransformer,
    max_depth,
    parameter_counts,
)
from stn.models.transformer import IDENTITY_THETA

from .conftest import compose_config

MNIST = {"input_mean": 0.1307, "input_std": 0.3081}  # normalised MNIST: the background is -mean/std
BACKGROUND = -0.1307 / 0.3081


def make_stn(depth: int = 2) -> STNClassifier:
    return STNClassifier(ConvClassifier(), SpatialTransformer(LocalizationNet(depth=depth), **MNIST))


def test_identity_initialised_transformer_returns_its_input():
    torch.manual_seed(0)
    images = torch.randn(8, 1, 28, 28)
    transformer = SpatialTransformer(LocalizationNet(), **MNIST)
    transformed, theta = transformer(images)
    assert torch.allclose(theta, torch.tensor(IDENTITY_THETA).view(1, 2, 3).expand(8, 2, 3))
    assert torch.allclose(transformed, images, atol=1e-5)


def test_the_tutorial_layout_at_depth_two():
    localization = LocalizationNet(depth=2)
    convs = [m for m in localization.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 8, (7, 7)),
        (8, 10, (5, 5)),
    ]
    linears = [m for m in localization.regressor if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(90, 32)]
    head = SpatialTransformer(localization).head  # the transformer adds the tutorial's Linear(32, 6)
    assert (head.in_features, head.out_features) == (32, 6)
    assert torch.count_nonzero(head.weight) == 0


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_output_shapes_for_every_depth(depth: int):
    model = make_stn(depth)
    images = torch.randn(5, 1, 28, 28)
    transformed, theta = model.transform(images)
    assert theta.shape == (5, 2, 3)
    assert transformed.shape == images.shape
    assert model(images).shape == (5, 10)


def test_depths_that_cannot_fit_the_input_are_rejected():
    assert max_depth(28, [7, 5, 3, 3], [0, 0, 1, 1]) == 3
    with pytest.raises(ValueError, match=r"depth=[04] is out of range: allowed 1\.\.3 for a 28x28 input"):
        LocalizationNet(depth=4)
    with pytest.raises(ValueError, match=r"depth=[04] is out of range: allowed 1\.\.3 for a 28x28 input"):
        LocalizationNet(depth=0)


def test_gradients_reach_every_localization_parameter():
    torch.manual_seed(0)
    model = make_stn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    # the last layer starts at zero weight, so the first step only moves it; the second reaches all
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    for name, parameter in model.transformer.localization.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_zooming_out_keeps_the_background_value():
    background = torch.full((2, 1, 28, 28), BACKGROUND)
    zoom_out = torch.tensor([[2.0, 0, 0], [0, 2.0, 0]]).expand(2, 2, 3)
    padded = SpatialTransformer(LocalizationNet(), **MNIST).warp(background, zoom_out)
    assert torch.allclose(padded, background, atol=1e-6)
    # the trap the fill value avoids: grid_sample's zero padding paints a bright frame
    zero_padded = SpatialTransformer(LocalizationNet(), pad_with_background=False, **MNIST).warp(
        background, zoom_out
    )
    assert zero_padded[..., 0, 0].allclose(torch.zeros(2, 1))


def test_cnn_baseline_has_no_transformer():
    model = STNClassifier(ConvClassifier())
    images = torch.randn(3, 1, 28, 28)
    transformed, theta = model.transform(images)
    assert theta is None and transformed is images
    assert model(images).shape == (3, 10)


@pytest.mark.parametrize("transformer", [ProjectiveTransformer, ThinPlateSplineTransformer])
def test_projective_and_spline_transformers_start_as_the_identity_and_learn(transformer):
    torch.manual_seed(0)
    images = torch.randn(6, 1, 28, 28)
    model = STNClassifier(ConvClassifier(), transformer(LocalizationNet(), **MNIST))
    transformed, theta = model.transform(images)
    assert torch.allclose(transformed, images, atol=5e-4)
    assert (
        theta.shape == {ProjectiveTransformer: (6, 3, 3), ThinPlateSplineTransformer: (6, 16, 2)}[transformer]
    )
    F.cross_entropy(model(images), torch.randint(0, 10, (6,))).backward()
    head = model.transformer.head
    assert head.weight.grad.abs().sum() > 0  # gradients reach the parameters through the grid


def test_projective_grid_with_an_affine_matrix_is_the_affine_grid():
    transformer = ProjectiveTransformer(LocalizationNet())
    affine = torch.tensor([[[0.9, -0.2, 0.1], [0.3, 1.1, -0.2]]])
    projective = torch.cat([affine, torch.tensor([[[0.0, 0.0, 1.0]]])], dim=1)
    size = (1, 1, 28, 28)
    expected = F.affine_grid(affine, size, align_corners=False)
    assert torch.allclose(transformer.sampling_grid(projective, size), expected, atol=1e-5)


def test_projective_perspective_terms_take_a_smaller_step():
    transformer = ProjectiveTransformer(LocalizationNet(), perspective_scale=0.1)
    raw = torch.tensor([[1.0, 0.0, 0.5, 0.0, 1.0, -0.5, 2.0, -3.0]])
    theta = transformer.to_theta(raw)  # (1, 3, 3)
    assert torch.allclose(theta[0, 2], torch.tensor([0.2, -0.3, 1.0]))
    assert torch.equal(theta[0, :2].flatten(), raw[0, :6])  # the affine part as predicted


def test_spline_with_every_control_point_shifted_is_a_translation():
    transformer = ThinPlateSplineTransformer(LocalizationNet())
    shift = torch.tensor([0.2, -0.1])
    theta = (transformer.control + shift).unsqueeze(0)  # (1, 16, 2)
    grid = transformer.sampling_grid(theta, (1, 1, 28, 28))
    identity = F.affine_grid(torch.tensor([[[1.0, 0, 0], [0, 1, 0]]]), (1, 1, 28, 28), align_corners=False)
    assert torch.allclose(grid, identity + shift, atol=1e-4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SpatialTransformer(LocalizationNet(), output_size=0), "output_size=0 is out of range"),
        (lambda: ProjectiveTransformer(LocalizationNet(), perspective_scale=0), "perspective_scale=0 is out"),
        (
            lambda: ThinPlateSplineTransformer(LocalizationNet(), points_per_side=1),
            "points_per_side=1 is out",
        ),
        (lambda: ConvClassifier(image_size=12), "image_size=12 is out of range: allowed integers >= 16"),
    ],
)
def test_model_arguments_are_checked_where_they_enter(make, message: str):
    with pytest.raises(ValueError, match=f"^{message}"):
        make()


def test_grid_transformers_reject_align_corners():
    with pytest.raises(ValueError, match=r"align_corners=True is out of range: allowed false \(its grids"):
        ProjectiveTransformer(LocalizationNet(), align_corners=True)


def test_fully_connected_baseline_and_st_fcn():
    torch.manual_seed(0)
    images = torch.randn(4, 1, 42, 42)
    fcn = FullyConnectedClassifier(image_size=42)
    assert fcn(images).shape == (4, 10)
    st_fcn = STNClassifier(
        FullyConnectedClassifier(image_size=42),
        SpatialTransformer(FullyConnectedLocalization(image_size=42), **MNIST),
    )
    transformed, theta = st_fcn.transform(images)
    assert theta.shape == (4, 2, 3) and torch.allclose(transformed, images, atol=1e-5)
    classifier = (1764 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10)  # 42x42 -> 128 -> 128 -> 10
    localization = (1764 * 32 + 32) + (32 * 32 + 32) + (32 * 6 + 6)  # 42x42 -> 32 -> 32 -> 6
    expected = f"transformer {localization:,}, classifier {classifier:,}, total {classifier + localization:,}"
    assert parameter_counts(st_fcn) == expected


@pytest.mark.parametrize("kind", [InverseCompositionalTransformer, InverseCompositionalProjectiveTransformer])
def test_inverse_compositional_transformer_composes_its_updates(kind):
    torch.manual_seed(0)
    transformer = kind(LocalizationNet(), recurrences=3, **MNIST)
    plain = (
        ProjectiveTransformer if kind is InverseCompositionalProjectiveTransformer else SpatialTransformer
    )(LocalizationNet(), **MNIST)
    assert sum(p.numel() for p in transformer.parameters()) == sum(p.numel() for p in plain.parameters())
    images = torch.rand(4, 1, 28, 28)
    warped, theta = transformer(images)  # at initialisation every update is the identity
    torch.testing.assert_close(warped, images, atol=1e-5, rtol=0)
    with torch.no_grad():  # every update: the same shift of 0.1 whatever the image
        transformer.head.weight.zero_()
        transformer.head.bias[2] += 0.1
    _, theta = transformer(images)
    matrix = transformer.as_matrix(theta)
    torch.testing.assert_close(matrix[:, 0, 2], torch.full((4,), 0.3))  # three shifts composed
    torch.testing.assert_close(matrix[:, :2, :2], torch.eye(2).expand(4, 2, 2))


@pytest.mark.parametrize("model", ["paper_cnn", "paper_stn", "paper_ic_stn"])
def test_the_papers_models_have_the_papers_shape_and_train_a_step(model: str):
    """Held to the paper's description (sec. 4.1, appendix A, as re-implementations restate it):
    the CNN conv 9x9 (32) and 7x7 (64), each followed by max-pooling, on the input average-pooled
    x2; the localization net two 5x5 conv layers of 20 filters and a 20-unit layer."""
    cfg = compose_config("train.yaml", ["data=mnist_rts", f"model={model}"])
    module = instantiate(cfg.model)
    classifier = module.net.classifier
    pools = [m for m in classifier.features if isinstance(m, torch.nn.AvgPool2d)]
    convs = [m for m in classifier.features if isinstance(m, torch.nn.Conv2d)]
    assert len(pools) == 1 and pools[0].kernel_size == 2
    assert [(c.kernel_size, c.out_channels) for c in convs] == [((9, 9), 32), ((7, 7), 64)]
    assert sum(p.numel() for p in classifier.parameters()) == 119_050
    if model != "paper_cnn":
        localization = module.net.transformer.localization
        local_convs = [m for m in localization.features if isinstance(m, torch.nn.Conv2d)]
        assert [(c.kernel_size, c.out_channels) for c in local_convs] == [((5, 5), 20), ((5, 5), 20)]
        assert localization.out_features == 20
        assert sum(p.numel() for p in module.net.transformer.parameters()) == 12_286
    else:
        assert module.net.transformer is None
    # one training step on RTS-sized digits: a finite loss and gradients that reach every parameter
    images, labels = torch.randn(8, 1, 42, 42), torch.arange(8) % 10
    loss = torch.nn.functional.cross_entropy(module(images), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in classifier.parameters())


def test_the_minimal_stn_of_the_docs_is_the_projects_default_network():
    """docs/minimal_stn.md's 40 lines run, and have the default STN's layers and parameter count."""
    import re

    from stn.paths import ROOT

    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "minimal_stn.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # the doc's own code, as a reader would paste it
    minimal = namespace["MinimalSTN"]()
    ours = STNClassifier(ConvClassifier(), SpatialTransformer(LocalizationNet(), **MNIST))
    shapes = sorted(tuple(p.shape) for p in minimal.parameters())
    assert shapes == sorted(tuple(p.shape) for p in ours.parameters())
    assert sum(p.numel() for p in minimal.parameters()) == 27_360
    assert minimal(torch.randn(2, 1, 28, 28)).shape == (2, 10)
