from stn.models.classifier import ConvClassifier, FullyConnectedClassifier, STNClassifier
from stn.models.localization import FullyConnectedLocalization, LocalizationNet, max_depth
from stn.models.transformer import (
    InverseCompositionalProjectiveTransformer,
    InverseCompositionalTransformer,
    ProjectiveTransformer,
    SpatialTransformer,
    ThinPlateSplineTransformer,
)

__all__ = [
    "ConvClassifier",
    "FullyConnectedClassifier",
    "FullyConnectedLocalization",
    "InverseCompositionalProjectiveTransformer",
    "InverseCompositionalTransformer",
    "LocalizationNet",
    "ProjectiveTransformer",
    "STNClassifier",
    "SpatialTransformer",
    "ThinPlateSplineTransformer",
    "max_depth",
]
