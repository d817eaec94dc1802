from stn.callbacks.hparams import HParamsLogger
from stn.callbacks.transform_grid import TransformGridLogger
from stn.callbacks.transform_health import TransformHealth

__all__ = ["HParamsLogger", "TransformGridLogger", "TransformHealth"]
