from stn.models.classifier import ConvClassifier, FullyConnectedClassifier, STNClassifier
from stn.models.localization import FullyConnectedLocalization, LocalizationNet, max_depth
from stn.models.transformer import ProjectiveTransformer, SpatialTransformer, ThinPlateSplineTransformer

__all__ = [
    "ConvClassifier",
    "FullyConnectedClassifier",
    "FullyConnectedLocalization",
    "LocalizationNet",
    "ProjectiveTransformer",
    "STNClassifier",
    "SpatialTransformer",
    "ThinPlateSplineTransformer",
    "max_depth",
]
