"""Reading a run back: its command-line overrides (train, resume, summarize) and a finished run
folder's config (stn.eval, stn.paper_table, stn.summarize)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from omegaconf import DictConfig, OmegaConf


def split_override(override: str) -> tuple[str, str]:
    """`+model.x=1` -> (`model.x`, `1`): the key an override sets (append / delete marks dropped)
    and its value as written; ("", "") for anything that is not key=value."""
    key, equals, value = str(override).partition("=")
    return (key.lstrip("+~"), value) if equals else ("", "")


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
