"""Reading run folders back: the one reader that resume, stn.summarize, stn.paper_table and
stn.eval share.

A run folder is what Hydra and `stn.train` leave: `.hydra/` (config.yaml, hydra.yaml,
overrides.yaml), `checkpoints/`, `metrics.json` once the run finished, `<task>.log`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from omegaconf import DictConfig, OmegaConf


def split_override(override: str) -> tuple[str, str]:
    """`+model.x=1` -> (`model.x`, `1`): the key an override sets (append / delete marks dropped)
    and its value as written; ("", "") for anything that is not key=value."""
    key, equals, value = str(override).partition("=")
    return (key.lstrip("+~"), value) if equals else ("", "")


LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


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


def saved_config(run_dir: Path) -> DictConfig:
    """A run's config (`.hydra/config.yaml`) resolved as it was in the run.

    Hydra saves the config with its interpolations; those that read Hydra's own node
    (`${hydra:runtime.choices.data}`, `${hydra:runtime.output_dir}`) resolve here from the run's
    `.hydra/hydra.yaml`, outside a Hydra app."""
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
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
