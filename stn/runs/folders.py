"""A run folder's life: named and created (without ever sharing one), locked while a run trains in
it, its config recorded, and removed again only if this process made it and nothing was written.

What a run folder holds, and reading it back, is stn/runs/reading.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, read_write

from stn.errors import ConfigError
from stn.runs.reading import RUN_CONFIG, split_override
from stn.utils.files import file_lock

LOCK_FILE = ".lock"  # held (flock) while a run trains in its folder

# overrides a run's name leaves out: where it runs, how it reports progress, and the data / model
# choice its name already says; whole sections by prefix, single keys exactly (`data.batch_size` is named)
UNNAMED_SECTIONS = ("hydra", "paths", "callbacks.progress_bar")
UNNAMED_KEYS = ("ckpt_path", "data", "model", "data.data_dir", "print_config", "optuna_trial")
GROUPS = ("data", "model")  # named by their choice in a run's name, by `data=...` in a sweep job's


def _named(override: str) -> bool:
    key = split_override(override)[0]
    return key not in UNNAMED_KEYS and not any(key == s or key.startswith(f"{s}.") for s in UNNAMED_SECTIONS)


def _short_value(override: str) -> str:
    """`key=value` with a long float cut to 4 significant digits (`lr=0.003874144` -> `lr=0.003874`):
    a name tells runs apart; the exact value is in the run's .hydra/overrides.yaml."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    if "." not in value and "e" not in value.lower():
        return override  # an integer as written
    return f"{key}={number:.4g}"


def run_label(data: str, model: str, overrides: str, longest: int = 96) -> str:
    """The part of a run folder's name after its time: `_<data>_<model>_<overrides>`, a name a
    file system and TensorBoard's run list take (no `/`), at most `longest` characters, cut between
    overrides, never inside one (a single override longer than that is cut)."""
    kept = [_short_value(o) for o in overrides.split(",") if o and _named(o)]
    return _label([data, model, *kept], longest)


def job_label(overrides: str, longest: int = 96) -> str:
    """A sweep job's name after its number: `_<overrides>`, the keys the sweep varies (the fixed
    ones are left out, `leave_fixed_keys_out_of_job_names`), a swept `data=`/`model=` choice too."""
    kept = [_short_value(o) for o in overrides.split(",") if o and (_named(o) or o.split("=")[0] in GROUPS)]
    return _label(kept, longest)


def _label(parts: list[str], longest: int) -> str:
    parts = [part.replace("/", "-").replace(" ", "") for part in parts if part]
    label = parts[0][:longest] if parts else ""
    for part in parts[1:]:
        if len(label) + 1 + len(part) > longest:
            break
        label = f"{label}_{part}"
    return f"_{label}" if label else ""


def leave_fixed_keys_out_of_job_names(config: DictConfig) -> None:
    """At the start of a sweep: each job's folder is named by the keys the sweep varies
    (`3_model.optimizer.lr=0.01`), not by the settings every job shares, which would fill the
    name and cut the swept keys off (those are in the sweep's multirun.yaml, and on its summary
    page once). Each job's config is composed from the sweep's `hydra.overrides.hydra` and its own
    overrides, so the fixed keys go there as `hydra.job.config.override_dirname.exclude_keys`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = [str(override) for override in config.hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(task)
    fixed = [override.key_or_group for override in parsed if not override.is_sweep_override()]
    if not fixed:
        return
    excluded = [*config.hydra.job.config.override_dirname.exclude_keys, *fixed]
    quoted = ",".join(f"'{key}'" for key in dict.fromkeys(excluded))
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{quoted}]")


_created: set[Path] = set()  # the run folders this process made (new_run_dir), resolved


def created_here(folder: Path) -> bool:
    """Whether this process made `folder` (new_run_dir): the only folders it may remove again."""
    return folder.resolve() in _created


def new_run_dir(path: str) -> str:
    """`path`, else `path_1`, `path_2`, ...: the first folder this call creates itself. Run folders
    are named by the second, so two runs started in the same second (two terminals, two machines
    on one disk) would otherwise share one; `mkdir` without `exist_ok` lets only one of them win.
    The folder, and the parents it had to make, are recorded as this process's (`created_here`)."""
    candidate, suffix = Path(path), 0
    while True:
        missing = [parent for parent in candidate.parents if not parent.exists()]
        try:
            candidate.mkdir(parents=True)
            _created.update(folder.resolve() for folder in (candidate, *missing))
            return str(candidate)
        except FileExistsError:
            if not candidate.parent.is_dir():
                raise SystemExit(_cannot_create(candidate, "a folder above it is a file")) from None
            suffix += 1
            candidate = Path(f"{path}_{suffix}")
        except OSError as error:  # resolved while Hydra composes: a sentence, not its traceback
            raise SystemExit(_cannot_create(candidate, error.strerror or str(error))) from None


def run_dir_refusal(key: str, value: str) -> str | None:
    """The sentence for a folder named on the command line (`hydra.run.dir=`, `hydra.sweep.dir=`)
    that cannot become a run folder, or None: checked before Hydra makes it, whose own mkdir and
    log file would otherwise fail with a traceback. A value with an interpolation is left to Hydra."""
    if "${" in value or not value.strip():
        return None
    folder = Path(value).expanduser()
    too_long = [part for part in folder.parts if len(part.encode()) > 255]
    if too_long:
        why = f"a name in it is {len(too_long[0].encode())} bytes, more than the 255 a file system takes"
    elif folder.is_symlink() and not folder.exists():
        why = f"it is a link to {os.readlink(folder)}, which does not exist"
    elif folder.exists() and not folder.is_dir():
        why = "it is a file, not a folder"
    else:
        existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
        if not existing.is_dir():
            why = f"{existing} is a file, not a folder"
        elif not os.access(existing, os.W_OK):
            why = f"{existing} is not writable"
        else:
            space = os.statvfs(existing)
            if space.f_bavail == 0 or (space.f_files and space.f_favail == 0):
                why = f"the disk holding {existing} is full (no free space or no free inodes)"
            else:
                return None
    return f"error: {key}={value} cannot be a run folder: {why}"


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
    if not created_here(folder) or not folder.is_dir():
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
        if not created_here(parent) or any(parent.iterdir()):
            break
        parent.rmdir()
    return True


def record_run_config(run_dir: Path) -> None:
    """Keep a copy of Hydra's record of this run (`.hydra/`) in `run_config/`: Hydra rewrites
    `.hydra/` at every start in the folder, and a resume must compare with the run that wrote the
    checkpoints (stn/runs/resume.py). Written when a run starts afresh in the folder."""
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


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock while a run trains in it: a second run into the same folder (two
    `ckpt_path=last` at once) is refused at start. The lock is the kernel's (flock), so a killed
    process never leaves it held."""
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / LOCK_FILE, wait=False) as held:
        if not held:
            raise ConfigError(
                f"another process is training in {folder} right now; wait for it to end, or give this "
                "run its own folder (leave hydra.run.dir unset)"
            )
        yield
