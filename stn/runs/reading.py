"""Reading run folders back: the one reader that resume, stn.summarize, stn.paper_table and
stn.eval share (a folder's creation, lock and removal are stn/runs/folders.py).

A run folder is what Hydra and `stn.train` leave: `.hydra/` (config.yaml, hydra.yaml,
overrides.yaml), `checkpoints/`, `metrics.json` once the run finished, `<task>.log`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from omegaconf import DictConfig, OmegaConf

from stn.errors import ConfigError, first_line
from stn.utils.files import MAX_JSON_DEPTH, MAX_METRICS_BYTES, json_depth, read_text, read_yaml_text
from stn.utils.untrusted import check_targets, load_untrusted


def split_override(override: str) -> tuple[str, str]:
    """`+model.x=1` -> (`model.x`, `1`): the key an override sets (append / delete marks dropped)
    and its value as written; ("", "") for anything that is not key=value."""
    key, equals, value = str(override).partition("=")
    return (key.lstrip("+~"), value) if equals else ("", "")


LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
RUN_CONFIG = Path("run_config")  # the copy of the run's first .hydra/ record


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a config as a container) as {dotted key: leaf}:
    {"model": {"optimizer": {"lr": 0.01}}} -> {"model.optimizer.lr": 0.01}."""
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= flatten(value, f"{prefix}{key}.")
    return flat


@dataclass(frozen=True)
class RunFolder:
    """One run folder: what its command line set, which config groups it chose, its final metrics."""

    path: Path

    @cached_property
    def overrides(self) -> list[str]:
        """The command line's overrides, as Hydra recorded them (`.hydra/overrides.yaml`): plain
        strings, read as YAML data (no interpolation is resolved)."""
        overrides = plain_yaml(self.path / ".hydra" / "overrides.yaml")
        if not isinstance(overrides, list):
            raise ConfigError(f"{self.path / '.hydra' / 'overrides.yaml'} is not a list of overrides")
        return [str(override) for override in overrides]

    @cached_property
    def choices(self) -> dict[str, str]:
        """Each config group's choice (`data`: `mnist_rts`, ...), from `.hydra/hydra.yaml`."""
        hydra_file = self.path / ".hydra" / "hydra.yaml"
        if not hydra_file.is_file():
            return {}
        record = plain_yaml(hydra_file)
        try:
            choices = record["hydra"]["runtime"]["choices"]
        except (KeyError, TypeError):
            raise ConfigError(f"{hydra_file} has no hydra.runtime.choices") from None
        return {str(group): str(choice) for group, choice in (choices or {}).items()}

    @cached_property
    def metrics(self) -> dict | None:
        """metrics.json (written when the run finished), or None."""
        metrics_file = self.path / "metrics.json"
        if not (metrics_file.exists() or metrics_file.is_symlink()):
            return None
        text = read_text(metrics_file, MAX_METRICS_BYTES)
        try:
            metrics = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"{metrics_file} is not JSON ({error})") from None
        except RecursionError:
            raise ConfigError(f"{metrics_file} nests deeper than any metrics file") from None
        if not isinstance(metrics, dict):
            raise ConfigError(f"{metrics_file} is not a JSON object of metrics")
        if json_depth(metrics) > MAX_JSON_DEPTH:
            raise ConfigError(f"{metrics_file} nests deeper than any metrics file ({MAX_JSON_DEPTH} levels)")
        return metrics

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST_CHECKPOINT

    def config(self) -> DictConfig:
        return saved_config(self.path)


def plain_yaml(path: Path) -> Any:
    """A YAML file as plain data (lists, dicts, strings): nothing in it is resolved or built; a
    bounded regular file without anchors or aliases (stn/utils/files.py)."""
    try:
        return yaml.safe_load(read_yaml_text(path))
    except (OSError, yaml.YAMLError) as error:
        first = first_line(error)
        raise ConfigError(f"{path} cannot be read as YAML ({first})") from None


def run_folders(root: Path) -> list[RunFolder]:
    """Every run folder below `root` (one with `.hydra/overrides.yaml`), in path order."""
    return [RunFolder(recorded.parent.parent) for recorded in sorted(root.glob("**/.hydra/overrides.yaml"))]


def saved_config(run_dir: Path, record: str = ".hydra", paths: dict | None = None) -> DictConfig:
    """A run's config (`<record>/config.yaml`) resolved as it was in the run, after checking that
    reading it runs no code (stn/utils/untrusted.py).

    Hydra saves the config with its interpolations; those that read Hydra's own node
    (`${hydra:runtime.choices.data}`, `${hydra:runtime.output_dir}`) resolve here from the run's
    `<record>/hydra.yaml`, outside a Hydra app. `paths` replaces the run's `paths` node first, so
    that what derives from where the run wrote (checkpoint folders, log dirs) resolves as for `paths`."""
    config_file = run_dir / record / "config.yaml"
    config = load_untrusted(config_file)
    if not isinstance(config, DictConfig) or "model" not in config:
        raise ConfigError(f"{config_file} is not a run's config (it has no `model` node)")
    if paths is not None:
        config.paths = paths
    hydra_file = run_dir / record / "hydra.yaml"
    # where Hydra was to write (`hydra.run`, `hydra.sweep`: `${new_dir:...}`) and how it launched
    # the job (`hydra.launcher`) are not needed to read the run back, and are left out, not resolved
    hydra_record = (
        load_untrusted(hydra_file, leave_out=("hydra.run", "hydra.sweep", "hydra.launcher"))
        if hydra_file.is_file()
        else None
    )
    setup_globals()  # Hydra's resolvers (`hydra`, `now`), registered as a Hydra app does
    holder = HydraConfig.instance()
    previous = holder.cfg
    holder.cfg = hydra_record  # what HydraConfig.get() returns: its `hydra` node
    try:
        OmegaConf.resolve(config)
    except Exception as error:  # a broken interpolation: one sentence, naming the file
        first = first_line(error)
        raise ConfigError(f"{config_file} cannot be resolved ({first})") from None
    finally:
        holder.cfg = previous
    check_targets(config, config_file)
    return config
