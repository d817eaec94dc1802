"""What the entry points share: building callbacks and loggers from config groups, and reporting
a bad config or missing data as one sentence instead of a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from stn.data.mnist import MNISTDataError
from stn.models.acceleration import AccelerationError
from stn.utils.checks import ConfigError

log = logging.getLogger(__name__)

USER_ERRORS = (ConfigError, MNISTDataError, AccelerationError)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that has a `_target_`: the callbacks, the loggers."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors_reported() -> Iterator[None]:
    """A bad config value, missing data or a speed option this machine cannot run ends a single
    run with one clear sentence (exit code 1).
    In a multirun any error is logged into the job's log (where `stn.summarize` finds it) and
    re-raised, so Hydra marks that job failed and the other jobs of the sweep still run."""
    try:
        yield
    except USER_ERRORS as error:
        if _in_multirun():
            log.error("%s", error)  # into this job's log; Hydra reports the job as failed
            raise
        sys.exit(f"error: {error}")
    except Exception as error:
        if _in_multirun():
            log.debug("traceback", exc_info=True)
            log.error("%s: %s", type(error).__name__, error)
        raise
