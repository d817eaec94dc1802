from stn.callbacks.hparams import HParamsLogger
from stn.callbacks.stalled_loss import StalledLossWarning
from stn.callbacks.transform_grid import TransformGridLogger
from stn.callbacks.transform_health import TransformHealth

__all__ = ["HParamsLogger", "StalledLossWarning", "TransformGridLogger", "TransformHealth"]
