"""Errors a user can fix, and how the entry points report them: one sentence, no traceback.

The bottom of the package: it imports nothing from `stn`, and every module that rejects a value
raises one of these. A value is checked once, where it enters (a constructor); the error names the
argument, and `stn.utils.instantiators.build` turns the argument into the config key that set it
(`depth` -> `model.localization.depth`), so the user reads the key they typed.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, ListConfig

log = logging.getLogger(__name__)


class UserError(Exception):
    """Something the user can fix: a config value, missing data, an option this machine lacks."""


class ConfigError(UserError, ValueError):
    """A config value (or a combination of values) the run cannot use."""


class RunInterrupted(UserError):
    """The run was stopped by a signal before it finished: it is incomplete, and says so with a
    non-zero exit status (128 + the signal's number, as a shell reports a killed process) so that a
    scheduler or a script never takes it for a success."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


class TrainingDiverged(UserError):
    """The loss is no longer a finite number: training stopped, as nothing after it would count."""


class ArgumentError(ConfigError):
    """One argument outside what its owner accepts, raised where the value enters.

    `owner` is the class whose argument it is; `key` starts as the argument's name and becomes the
    full config key once `stn.utils.instantiators.build` finds the config node that built `owner`."""

    def __init__(self, owner: type, name: str, value: Any, allowed: str, why: str = "") -> None:
        self.owner, self.name, self.value, self.allowed, self.why = owner, name, value, allowed, why
        self.key = name
        super().__init__()

    def __str__(self) -> str:
        value = list(self.value) if isinstance(self.value, (list, tuple, ListConfig)) else self.value
        why = f" ({self.why})" if self.why else ""
        return f"{self.key}={value} is out of range: allowed {self.allowed}{why}"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def accepts(ok: Callable[[Any], bool], value: Any) -> bool:
    """`ok(value)`, where a value of the wrong type (`ok` raises TypeError or ValueError) is refused."""
    try:
        return bool(ok(value))
    except (TypeError, ValueError):
        return False


def check_argument(
    owner: type, name: str, value: Any, ok: Callable[[Any], bool], allowed: str, why: str = ""
) -> Any:
    """`value` if `ok(value)`, else ArgumentError; a value of the wrong type is out of range too."""
    if not accepts(ok, value):
        raise ArgumentError(owner, name, value, allowed, why)
    return value


class InvertedRangeError(ArgumentError):
    """A [min, max] argument whose min is above its max."""

    def __str__(self) -> str:
        return f"{self.key}={list(self.value)} is inverted: min must be <= max"


def check_range(
    owner: type, name: str, value: Any, low: float = -math.inf, high: float = math.inf
) -> tuple[float, float]:
    """A [min, max] argument: two numbers, min <= max, inside [low, high]."""
    allowed = f"[min, max] within [{low}, {high}]"
    check_argument(owner, name, value, lambda v: len(v) == 2 and all(is_number(x) for x in v), allowed)
    first, last = float(value[0]), float(value[1])
    if first > last:
        raise InvertedRangeError(owner, name, value, allowed)
    check_argument(owner, name, value, lambda _: low <= first and last <= high, allowed)
    return first, last


def _target_class(node: DictConfig) -> type | None:
    from hydra.utils import get_object

    try:
        target = get_object(str(node.get("_target_")))
    except Exception:  # not importable here: not the node we look for
        return None
    return target if isinstance(target, type) else None


def config_key_of(cfg: DictConfig, owner: type, name: str, prefix: str = "") -> str | None:
    """The dotted key of argument `name` in the first node of `cfg` that builds `owner`."""
    if "_target_" in cfg and _target_class(cfg) is owner:
        return f"{prefix}{name}"
    for child in cfg.keys():
        node = cfg._get_node(child)
        if isinstance(node, DictConfig) and not node._is_none() and not str(child).startswith("_"):
            found = config_key_of(node, owner, name, f"{prefix}{child}.")
            if found:
                return found
    return None


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError that caused `error` (Hydra's instantiate wraps what a constructor raised)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors_reported() -> Iterator[None]:
    """A user error ends a single run with one sentence (exit code 1), no traceback.

    In a multirun every error is logged into the job's log (where `stn.summarize` finds it) and
    re-raised, so Hydra marks that job failed and the other jobs of the sweep still run."""
    try:
        yield
    except Exception as error:
        user_error = user_error_in(error)
        if _in_multirun():
            if user_error is None:
                log.debug("traceback", exc_info=True)
            log.error("%s", user_error or f"{type(error).__name__}: {error}")
            raise
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(getattr(user_error, "exit_code", 1))
