from stn.callbacks.transform_grid import TransformGridLogger

__all__ = ["TransformGridLogger"]
