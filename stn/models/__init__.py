from torch import nn

from stn.models.classifier import ConvClassifier, FullyConnectedClassifier, PaperConvClassifier, STNClassifier
from stn.models.localization import FullyConnectedLocalization, LocalizationNet, max_depth
from stn.models.transformer import (
    InverseCompositionalProjectiveTransformer,
    InverseCompositionalTransformer,
    ProjectiveTransformer,
    SpatialTransformer,
    ThinPlateSplineTransformer,
    WarpingTransformer,
)


def parameter_counts(net: nn.Module) -> str:
    """Trainable parameters of the classifier, the transformer and both: comparable models keep
    these close, as the paper does."""
    parts = {name: sum(p.numel() for p in part.parameters()) for name, part in net.named_children()}
    parts["total"] = sum(p.numel() for p in net.parameters())
    return ", ".join(f"{name} {count:,}" for name, count in parts.items())


__all__ = [
    "ConvClassifier",
    "FullyConnectedClassifier",
    "FullyConnectedLocalization",
    "InverseCompositionalProjectiveTransformer",
    "InverseCompositionalTransformer",
    "LocalizationNet",
    "PaperConvClassifier",
    "ProjectiveTransformer",
    "STNClassifier",
    "SpatialTransformer",
    "ThinPlateSplineTransformer",
    "WarpingTransformer",
    "max_depth",
    "parameter_counts",
]
