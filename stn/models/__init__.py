from stn.models.classifier import ConvClassifier, STNClassifier
from stn.models.localization import LocalizationNet, max_depth
from stn.models.transformer import ProjectiveTransformer, SpatialTransformer, ThinPlateSplineTransformer

__all__ = [
    "ConvClassifier",
    "LocalizationNet",
    "ProjectiveTransformer",
    "STNClassifier",
    "SpatialTransformer",
    "ThinPlateSplineTransformer",
    "max_depth",
]
