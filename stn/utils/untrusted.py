"""Reading a file the project did not just write (a run folder, a zoo entry) as data, never as code.

A run folder or a zoo entry may come from anyone: a colleague, a cluster, a download. Two things in
a YAML file could run code when it is read:

- a `_target_`, which `hydra.utils.instantiate` imports and calls. Hydra resolves attribute paths,
  so a prefix check (`stn.models.`) also admits `stn.models.lit_module.torch.load`. A target is
  allowed only if its fully qualified name is exactly one that the project's own configs (`conf/`)
  name: the set is read from `conf/`, so a new config needs no second list.
- an interpolation through a resolver with side effects (the project's `new_dir` creates
  folders). Only plain interpolations (`${data.mean}`) and the read-only resolvers in
  `SAFE_RESOLVERS` are allowed; anything else is refused before anything is resolved.

One more thing must not leave a read file: this machine's environment. `${oc.env:TOKEN}` would
put a secret (or the home folder) into whatever shows the config (stn.summarize's pages). An
environment interpolation is allowed only as the project's own configs write it, at the same key
(`paths.root_dir: ${oc.env:STN_ROOT,.}`): the pairs are read from `conf/`, like the targets.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from stn.errors import ConfigError, first_line
from stn.paths import CONF_DIR
from stn.utils.files import read_yaml_text

# resolvers that only read: Hydra's record of the run, the clock, another key, the environment
SAFE_RESOLVERS = frozenset({"hydra", "now", "oc.select", "oc.dict.keys", "oc.dict.values"})
ENVIRONMENT = "oc.env"  # allowed only where conf/ itself reads the environment (project_environment)
_RESOLVER_CALL = re.compile(r"\$\{\s*([^${}:\s]+)\s*:")


def _leaves(tree: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a plain container (lists as `key[i]`)."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            yield from _leaves(value, f"{key}.{name}" if key else str(name))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _leaves(value, f"{key}[{index}]")
    else:
        yield key, tree


def _targets_in(config: DictConfig | ListConfig) -> Iterator[tuple[str, str]]:
    for key, value in _leaves(OmegaConf.to_container(config, resolve=False)):
        if key == "_target_" or key.endswith("._target_"):
            yield key, str(value)


@cache
def project_targets(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """Every `_target_` the project's configs name: the only classes a read file may build."""
    targets: set[str] = set()
    for path in sorted(conf_dir.rglob("*.yaml")):
        targets |= {target for _, target in _targets_in(OmegaConf.load(path))}
    return frozenset(targets)


@cache
def project_environment(conf_dir: Path = CONF_DIR) -> frozenset[tuple[str, str]]:
    """(key, value) of every leaf of conf/ that reads the environment (`paths.root_dir`,
    `${oc.env:STN_ROOT,.}`): keys under their config group (a file's folder), as in a run's config."""
    pairs: set[tuple[str, str]] = set()
    for path in sorted(conf_dir.rglob("*.yaml")):
        group = ".".join(path.relative_to(conf_dir).parent.parts)
        for key, value in _leaves(OmegaConf.to_container(OmegaConf.load(path), resolve=False)):
            if isinstance(value, str) and f"{ENVIRONMENT}:" in value:
                pairs.add((f"{group}.{key}" if group else key, value))
    return frozenset(pairs)


def _project_reads_environment(key: str, value: str) -> bool:
    return (key, value) in project_environment()


# what the project ever builds from a read config: the model and its data (eval, predict, export,
# the zoo, paper_table); a run's callbacks, loggers and trainer are only ever compared, never built
BUILT = ("model", "data")


def check_resolvers(config: DictConfig | ListConfig, source: Path) -> None:
    """ConfigError if resolving `config` (loaded from `source`) would call a resolver with side
    effects. Checked on the file as written, before anything is resolved."""
    for key, value in _leaves(OmegaConf.to_container(config, resolve=False)):
        if isinstance(value, str):
            unsafe = [name for name in _RESOLVER_CALL.findall(value) if name not in SAFE_RESOLVERS]
            if unsafe == [ENVIRONMENT] * len(unsafe) and unsafe and _project_reads_environment(key, value):
                continue
            if ENVIRONMENT in unsafe:
                raise ConfigError(
                    f"{source} has {key}={value!r}, which reads this machine's environment; a config read "
                    "back from disk may do that only where the project's own configs do (paths.root_dir, "
                    "paths.data_dir), so that no secret or machine detail leaves through it"
                )
            if unsafe:
                raise ConfigError(
                    f"{source} has {key}={value!r}, an interpolation through the resolver {unsafe[0]!r}, "
                    f"which may act on this machine; only {', '.join(sorted(SAFE_RESOLVERS))} are "
                    "read from a run folder or the zoo"
                )


def check_targets(config: DictConfig, source: Path) -> None:
    """ConfigError if a node the project builds (`BUILT`) names a `_target_` that is not exactly one
    of the project's. Checked on the resolved config, so an interpolated target is seen as built."""
    allowed = project_targets()
    for key, value in _leaves(OmegaConf.to_container(config, resolve=True)):
        is_target = key == "_target_" or key.endswith("._target_")
        if is_target and key.split(".")[0] in BUILT and str(value) not in allowed:
            node = key.removesuffix("._target_")
            raise ConfigError(
                f"{source} asks to build {node}._target_={value}, which is not one of this project's "
                f"classes (those conf/ names); refusing to build anything from it"
            )


def load_untrusted(path: Path, leave_out: tuple[str, ...] = ()) -> DictConfig | ListConfig:
    """The YAML file `path` without the dotted keys `leave_out`, checked with `check_resolvers`:
    one sentence if it is not YAML. Its targets are checked once it is resolved (`check_targets`)."""
    text = read_yaml_text(path)  # a bounded regular file without anchors or aliases
    try:
        config = OmegaConf.load(io.StringIO(text))
    except Exception as error:  # yaml's and OmegaConf's parse errors
        first = first_line(error)
        raise ConfigError(f"{path} cannot be read as a config ({first})") from None
    if not isinstance(config, (DictConfig, ListConfig)):
        raise ConfigError(f"{path} is not a config (a YAML mapping)")
    for key in leave_out:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(config, parent, default=None) if parent else config
        if isinstance(node, DictConfig) and name in node:
            del node[name]
    check_resolvers(config, path)
    return config
