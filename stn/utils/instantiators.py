"""Building the run's objects from their config nodes."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from stn.errors import ArgumentError, config_key_of, user_error_in


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """`instantiate` the node at `key` of `cfg`. A constructor's user error comes out as itself, not
    wrapped in Hydra's InstantiationException, and an ArgumentError names the full config key
    (`depth` -> `model.localization.depth`)."""
    node = OmegaConf.select(cfg, key)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = user_error_in(error)
        if cause is None:
            raise
        if isinstance(cause, ArgumentError):
            cause.key = config_key_of(node, cause.owner, cause.name, prefix=f"{key}.") or cause.key
        raise cause from None


def build_model(cfg: DictConfig) -> Any:
    """The run's LightningModule: the class `model._target_` names (training_step=graphed names
    the graphed step's subclass there)."""
    return build(cfg, "model")


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that has a `_target_`: the callbacks, the loggers."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]
