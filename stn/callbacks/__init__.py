from stn.callbacks.hparams import HParamsLogger
from stn.callbacks.transform_grid import TransformGridLogger

__all__ = ["HParamsLogger", "TransformGridLogger"]
