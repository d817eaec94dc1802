"""Reading run folders back: the one reader that resume, stn.summarize, stn.paper_table and
stn.eval share.

A run folder is what Hydra and `stn.train` leave: `.hydra/` (config.yaml, hydra.yaml,
overrides.yaml), `checkpoints/`, `metrics.json` once the run finished, `<task>.log`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from omegaconf import DictConfig, ListConfig, OmegaConf

from stn.errors import ConfigError


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


def new_run_dir(path: str) -> str:
    """`path`, else `path_1`, `path_2`, ...: the first folder this call creates itself. Run folders
    are named by the second, so two runs started in the same second (two terminals, two machines
    on one disk) would otherwise share one; `mkdir` without `exist_ok` lets only one of them win."""
    candidate, suffix = Path(path), 0
    while True:
        try:
            candidate.mkdir(parents=True)
            return str(candidate)
        except FileExistsError:
            suffix += 1
            candidate = Path(f"{path}_{suffix}")


@dataclass(frozen=True)
class RunFolder:
    """One run folder: what its command line set, which config groups it chose, its final metrics."""

    path: Path

    @cached_property
    def overrides(self) -> list[str]:
        """The command line's overrides, as Hydra recorded them (`.hydra/overrides.yaml`)."""
        return [str(override) for override in OmegaConf.load(self.path / ".hydra" / "overrides.yaml")]

    @cached_property
    def choices(self) -> dict[str, str]:
        """Each config group's choice (`data`: `mnist_rts`, ...), from `.hydra/hydra.yaml`."""
        hydra_file = self.path / ".hydra" / "hydra.yaml"
        if not hydra_file.is_file():
            return {}
        return dict(OmegaConf.load(hydra_file).hydra.runtime.choices)

    @cached_property
    def metrics(self) -> dict | None:
        """metrics.json (written when the run finished), or None."""
        metrics_file = self.path / "metrics.json"
        return json.loads(metrics_file.read_text()) if metrics_file.is_file() else None

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST_CHECKPOINT

    def config(self) -> DictConfig:
        return saved_config(self.path)


def run_folders(root: Path) -> list[RunFolder]:
    """Every run folder below `root` (one with `.hydra/overrides.yaml`), in path order."""
    return [RunFolder(recorded.parent.parent) for recorded in sorted(root.glob("**/.hydra/overrides.yaml"))]


# what a run folder's config may build: the project's own classes and the library classes its
# configs name. A run folder is data (copied from a colleague, a cluster): anything else in it is
# refused, not built
BUILDABLE = (
    "stn.models.",
    "stn.data.",
    "stn.callbacks.",
    "torch.optim.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
    "lightning.Trainer",
    "lightning.pytorch.Trainer",
)


def check_buildable(config: Any, source: Path, key: str = "") -> None:
    """ConfigError if any `_target_` in `config` is not one this project builds."""
    if isinstance(config, DictConfig):
        target = config.get("_target_") if "_target_" in config else None
        if target is not None and not any(str(target) == p or str(target).startswith(p) for p in BUILDABLE):
            raise ConfigError(
                f"{source} asks to build {key or 'its root'}._target_={target}, which is not one of this "
                f"project's classes ({', '.join(BUILDABLE)}); refusing to build anything from it"
            )
        for name in config.keys():
            check_buildable(config._get_node(name), source, f"{key}.{name}" if key else str(name))
    elif isinstance(config, ListConfig):
        for index, item in enumerate(config._iter_ex(resolve=False)):
            check_buildable(item, source, f"{key}[{index}]")


def saved_config(run_dir: Path, record: str = ".hydra", paths: dict | None = None) -> DictConfig:
    """A run's config (`<record>/config.yaml`) resolved as it was in the run, after checking that
    it builds only the project's classes (`check_buildable`).

    Hydra saves the config with its interpolations; those that read Hydra's own node
    (`${hydra:runtime.choices.data}`, `${hydra:runtime.output_dir}`) resolve here from the run's
    `<record>/hydra.yaml`, outside a Hydra app. `paths` replaces the run's `paths` node first, so
    that what derives from where the run wrote (checkpoint folders, log dirs) resolves as for `paths`."""
    config_file = run_dir / record / "config.yaml"
    config = OmegaConf.load(config_file)
    check_buildable(config, config_file)
    if paths is not None:
        config.paths = paths
    hydra_file = run_dir / record / "hydra.yaml"
    if not hydra_file.is_file():
        return config
    setup_globals()  # Hydra's resolvers (`hydra`, `now`), registered as a Hydra app does
    holder = HydraConfig.instance()
    previous = holder.cfg
    holder.cfg = OmegaConf.load(hydra_file)  # what HydraConfig.get() returns: its `hydra` node
    try:
        OmegaConf.resolve(config)
    finally:
        holder.cfg = previous
    return config


def record_run_config(run_dir: Path) -> None:
    """Keep a copy of Hydra's record of this run (`.hydra/`) in `run_config/`: Hydra rewrites
    `.hydra/` at every start in the folder, and a resume must compare with the run that wrote the
    checkpoints (stn/utils/resume.py). Written when a run starts afresh in the folder."""
    source, record = run_dir / ".hydra", run_dir / RUN_CONFIG
    if not (source / "config.yaml").is_file():
        return
    record.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        if (source / name).is_file():
            shutil.copy2(source / name, record / name)


def restore_run_config(run_dir: Path) -> None:
    """Put the run's own record back in `.hydra/` (after a start that was refused there)."""
    record = run_dir / RUN_CONFIG
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        if (record / name).is_file():
            shutil.copy2(record / name, run_dir / ".hydra" / name)


def check_writable(folder: Path) -> None:
    """ConfigError now, not after the first epoch has trained, if `folder` cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"{folder} cannot be written ({error.strerror or error}): the run could not save its checkpoints "
            "there; make it writable, or run in another folder (hydra.run.dir=... or paths.log_dir=...)"
        ) from None


def csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never half of one
    (a run killed while writing metrics.json or a summary)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
