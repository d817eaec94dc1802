"""The pure-PyTorch networks: localization nets, transformers, classifiers and the STN around them."""

from stn.models.classifier import (
    ConvClassifier,
    FullyConnectedClassifier,
    PaperConvClassifier,
    STNClassifier,
    parameter_counts,
)
from stn.models.localization import FullyConnectedLocalization, LocalizationNet, max_depth
from stn.models.transformer import (
    InverseCompositionalProjectiveTransformer,
    InverseCompositionalTransformer,
    ProjectiveTransformer,
    SpatialTransformer,
    ThinPlateSplineTransformer,
    WarpingTransformer,
)

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
