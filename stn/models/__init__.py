from stn.models.classifier import ConvClassifier, STNClassifier
from stn.models.localization import LocalizationNet, max_depth
from stn.models.transformer import SpatialTransformer

__all__ = ["ConvClassifier", "LocalizationNet", "STNClassifier", "SpatialTransformer", "max_depth"]
