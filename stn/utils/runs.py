"""Reading run folders back: the one reader that resume, stn.summarize, stn.paper_table and
stn.eval share.

A run folder is what Hydra and `stn.train` leave: `.hydra/` (config.yaml, hydra.yaml,
overrides.yaml), `checkpoints/`, `metrics.json` once the run finished, `<task>.log`.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from omegaconf import DictConfig, OmegaConf

from stn.errors import ConfigError
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


# overrides a run's name leaves out: where it runs, how it reports progress, and the data / model
# choice its name already says; whole sections by prefix, single keys exactly (`data.batch_size` is named)
UNNAMED_SECTIONS = ("hydra", "paths", "callbacks.progress_bar")
UNNAMED_KEYS = ("ckpt_path", "data", "model", "data.data_dir", "print_config")


def _named(override: str) -> bool:
    key = split_override(override)[0]
    return key not in UNNAMED_KEYS and not any(key == s or key.startswith(f"{s}.") for s in UNNAMED_SECTIONS)


def run_label(data: str, model: str, overrides: str, longest: int = 96) -> str:
    """The part of a run folder's name after its time: `_<data>_<model>_<overrides>`, a name a
    file system and TensorBoard's run list take (no `/`), cut at `longest` characters."""
    kept = [o for o in overrides.split(",") if o and _named(o)]
    parts = [part for part in (data, model, *kept) if part]
    label = "_".join(parts).replace("/", "-").replace(" ", "")
    return f"_{label[:longest]}" if label else ""


# the run folders this process created (new_run_dir): the only folders it may remove again
CREATED_RUN_DIRS: set[Path] = set()


def new_run_dir(path: str) -> str:
    """`path`, else `path_1`, `path_2`, ...: the first folder this call creates itself. Run folders
    are named by the second, so two runs started in the same second (two terminals, two machines
    on one disk) would otherwise share one; `mkdir` without `exist_ok` lets only one of them win.
    The folder, and the parents it had to make, are recorded as this process's (CREATED_RUN_DIRS)."""
    candidate, suffix = Path(path), 0
    while True:
        missing = [parent for parent in candidate.parents if not parent.exists()]
        try:
            candidate.mkdir(parents=True)
            CREATED_RUN_DIRS.update(folder.resolve() for folder in (candidate, *missing))
            return str(candidate)
        except FileExistsError:
            if not candidate.parent.is_dir():
                raise SystemExit(_cannot_create(candidate, "a folder above it is a file")) from None
            suffix += 1
            candidate = Path(f"{path}_{suffix}")
        except OSError as error:  # resolved while Hydra composes: a sentence, not its traceback
            raise SystemExit(_cannot_create(candidate, error.strerror or str(error))) from None


def _cannot_create(folder: Path, why: str) -> str:
    return (
        f"error: the run folder {folder} cannot be created ({why}); STN_ROOT, paths.log_dir and "
        "hydra.run.dir / hydra.sweep.dir decide where runs go: point them at a folder you can write"
    )


def remove_if_unused(folder: Path) -> bool:
    """Remove `folder`, a run folder this process created (new_run_dir), if the run stopped before
    it wrote anything but Hydra's record and its logs (a value refused at start): such folders
    would only crowd the runs that did something. Its empty parents made for it go too. True if
    removed; a folder with any checkpoint, event file or metrics is kept."""
    folder = folder.resolve()
    if folder not in CREATED_RUN_DIRS or not folder.is_dir():
        return False
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not (
            relative.parts[0] in (".hydra", str(RUN_CONFIG))
            or path.suffix == ".log"
            or path.name == LOCK_FILE
        ):
            return False
    shutil.rmtree(folder)
    for parent in folder.parents:
        if parent not in CREATED_RUN_DIRS or any(parent.iterdir()):
            break
        parent.rmdir()
    return True


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
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
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
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{config_file} cannot be resolved ({first})") from None
    finally:
        holder.cfg = previous
    check_targets(config, config_file)
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


LOCK_FILE = ".lock"


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock while a run trains in it: a second run into the same folder (two
    `ckpt_path=last` at once) is refused at start. The lock is the kernel's (flock), so a killed
    process never leaves it held."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"another process is training in {folder} right now; wait for it to end, or give this "
                "run its own folder (leave hydra.run.dir unset)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
