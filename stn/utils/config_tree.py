"""The composed config as a tree, printed when a run starts and saved in its folder
(`config_tree.log`): what the run will do, read at a glance before it does it."""

from __future__ import annotations

import io
from pathlib import Path

import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

FIRST = ("data", "model", "callbacks", "logger", "trainer", "paths")


def config_tree(cfg: DictConfig, resolve: bool = True) -> rich.tree.Tree:
    """One branch per top-level key (the config groups first), each holding its YAML."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [key for key in FIRST if key in cfg] + [key for key in cfg if key not in FIRST and key != "hydra"]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=resolve) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    return tree


def show_config(cfg: DictConfig, save_to: Path | None = None, print_it: bool = True) -> None:
    """Print the tree (to the terminal) and write it as plain text to `save_to`."""
    tree = config_tree(cfg)
    if print_it:
        Console().print(tree)
    if save_to is not None:
        buffer = io.StringIO()
        Console(file=buffer, no_color=True, width=120).print(tree)
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_text(buffer.getvalue())
