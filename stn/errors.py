"""Errors a user can fix, and how the entry points report them: one sentence, no traceback.

The bottom of the package: it imports nothing from `stn`, and every module that rejects a value
raises one of these. A value is checked once, where it enters (a constructor); the error names the
argument, and `stn.utils.instantiators.build` turns the argument into the config key that set it
(`depth` -> `model.localization.depth`), so the user reads the key they typed.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
        self.signal_number = int(signal_number)
        self.exit_code = 128 + self.signal_number

    def __reduce__(self) -> tuple:  # a sweep's launcher pickles a job's result, errors included
        return type(self), (str(self), self.signal_number)


class TrainingDiverged(UserError):
    """The loss is no longer a finite number: training stopped, as nothing after it would count."""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Allowed:
    """What one value accepts: its test and the words a refusal prints, written once and shared by
    every argument and config key with the same range (`integers(1)`, `one_of("epoch", "step")`)."""

    test: Callable[[Any], bool]
    words: str
    why: str = ""  # the reason, when the range is not self-evident

    def accepts(self, value: Any) -> bool:
        """`test(value)`, where a value of the wrong type (the test raises) is refused."""
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False

    def because(self, why: str) -> Allowed:
        return replace(self, why=why)

    def or_null(self) -> Allowed:
        return Allowed(lambda v: v is None or self.accepts(v), f"{self.words} or null", self.why)


def integers(low: int, high: int | None = None) -> Allowed:
    words = f"integers >= {low}" if high is None else f"integers {low}..{high}"
    return Allowed(lambda v: is_int(v) and low <= v and (high is None or v <= high), words)


def numbers(low: float = -math.inf, high: float = math.inf, *, above: float | None = None) -> Allowed:
    """Finite numbers in [low, high], or above `above` (exclusive)."""
    if above is not None:
        return Allowed(lambda v: is_number(v) and v > above, f"> {above:g}")
    words = f">= {low:g}" if high == math.inf else f"[{low:g}, {high:g}]"
    return Allowed(lambda v: is_number(v) and low <= v <= high, words)


def one_of(*choices: Any) -> Allowed:
    """One of `choices`, compared as text (so `precision=16` is the choice "16")."""
    names = tuple(str(choice) for choice in choices)
    return Allowed(lambda v: str(v) in names, " | ".join(names))


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name: what a one-sentence
    error quotes of a library's own (often many-line) message."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def out_of_range(key: str, value: Any, allowed: Allowed) -> str:
    """The one sentence for a refused value."""
    value = list(value) if isinstance(value, (list, tuple, ListConfig)) else value
    why = f" ({allowed.why})" if allowed.why else ""
    return f"{key}={value} is out of range: allowed {allowed.words}{why}"


class ArgumentError(ConfigError):
    """One constructor argument outside what its owner accepts, raised where the value enters.

    `owner` is the class whose argument it is; `key` starts as the argument's name and becomes the
    full config key once `stn.utils.instantiators.build` finds the config node that built `owner`."""

    def __init__(self, owner: type, name: str, value: Any, allowed: Allowed) -> None:
        self.owner, self.name, self.value, self.allowed = owner, name, value, allowed
        self.key = name
        super().__init__()

    def __str__(self) -> str:
        return out_of_range(self.key, self.value, self.allowed)


def _owner_type(owner: object) -> type:
    return owner if isinstance(owner, type) else type(owner)


def check(owner: object, allowed: Allowed, **argument: Any) -> Any:
    """The value of the one `name=value` argument if `allowed` accepts it, else ArgumentError naming
    that argument of `owner` (an instance or its class):
    `self.depth = check(self, integers(1), depth=depth)`."""
    ((name, value),) = argument.items()
    if not allowed.accepts(value):
        raise ArgumentError(_owner_type(owner), name, value, allowed)
    return value


def check_value(key: str, value: Any, allowed: Allowed) -> Any:
    """`value` if `allowed` accepts it, else ConfigError naming `key`: for an entry point's own
    options and the config keys that no project class owns."""
    if not allowed.accepts(value):
        raise ConfigError(out_of_range(key, value, allowed))
    return value


class InvertedRangeError(ArgumentError):
    """A [min, max] argument whose min is above its max."""

    def __str__(self) -> str:
        return f"{self.key}={list(self.value)} is inverted: min must be <= max"


def check_range(
    owner: object, low: float = -math.inf, high: float = math.inf, **argument: Any
) -> tuple[float, float]:
    """A [min, max] argument given as `name=value`: two numbers, min <= max, inside [low, high]."""
    ((name, value),) = argument.items()
    words = f"[min, max] within [{low}, {high}]"
    check(owner, Allowed(lambda v: len(v) == 2 and all(is_number(x) for x in v), words), **argument)
    first, last = float(value[0]), float(value[1])
    if first > last:
        raise InvertedRangeError(_owner_type(owner), name, value, Allowed(bool, words))
    check(owner, Allowed(lambda _: low <= first and last <= high, words), **argument)
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


def in_multirun() -> bool:
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
        if in_multirun():
            if user_error is None:
                log.debug("traceback", exc_info=True)
            log.error("%s", user_error or f"{type(error).__name__}: {error}")
            if isinstance(user_error, RunInterrupted) and os.environ.get("SLURM_JOB_ID"):
                # a SLURM job stopped by the scheduler (requeue, pre-emption, scancel) ends with no
                # result: submitit then waits for the requeued job, which resumes from last.ckpt,
                # instead of recording this attempt as the job's end
                raise SystemExit(user_error.exit_code) from None
            raise
        if user_error is None:
            raise
        _to_log_files(f"error: {user_error}")  # the run folder's log ends with why it ended
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(getattr(user_error, "exit_code", 1))


def _to_log_files(message: str) -> None:
    """`message` into the log files only (the run folder's <task>.log): stderr gets it once, as is.
    Only a log the run has already written to: a refused start creates no file (and no folder)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and os.path.isfile(handler.baseFilename):
            handler.handle(record)


# -- Hydra's refusals as one sentence: what Hydra writes to stderr before a command's task starts is
# held, and shown only if no sentence can be said instead (stn/entry.py) --

_held: list[Any] = []  # [the real stderr, the buffer] while held


def hold_stderr() -> None:
    """Hold what is written to stderr until `release_stderr` (the task starts, a sweep begins)."""
    if not _held:
        import io

        _held.extend([sys.stderr, io.StringIO()])
        sys.stderr = _held[1]


def release_stderr(show: bool = True) -> str:
    """Back to the real stderr (with what was held written to it, if `show`); returns what was held."""
    if not _held:
        return ""
    real, buffer = _held
    _held.clear()
    sys.stderr = real
    if show and buffer.getvalue():
        real.write(buffer.getvalue())
    return buffer.getvalue()


def stderr_held() -> bool:
    return bool(_held)
