"""Reading and writing checkpoints safely: nothing in a read checkpoint runs, and a written one is
never half a file under its final name."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from stn.errors import ConfigError, UserError, first_line
from stn.utils.files import check_regular

MAX_CHECKPOINT_BYTES = 16 << 30  # far beyond any model this project trains


def read_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents, read with `weights_only=True` (no pickle code runs): one
    sentence for a file that is not one, never torch's advice to read it unsafely. Only a regular
    file is read (a FIFO would block, a link to /dev/zero never end)."""
    try:
        check_regular(checkpoint, MAX_CHECKPOINT_BYTES)
    except ConfigError as error:
        raise UserError(
            f"{checkpoint} cannot be read as a checkpoint ({str(error).removeprefix(f'{checkpoint} ')})"
        ) from None
    damaged = _damaged_entry(checkpoint)
    if damaged:
        raise UserError(
            f"{checkpoint} cannot be read as a checkpoint (its part {damaged} fails its CRC-32 checksum: "
            "the file changed after it was written)"
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError("not a Lightning checkpoint (no state_dict)")
    except Exception as error:  # pickle, zip and torch raise many types
        first = first_line(error)
        if "weights_only" in str(error):  # a pickle that asks for code: never advise running it
            first = "it holds objects other than tensors and plain values, which are not loaded"
        raise UserError(f"{checkpoint} cannot be read as a checkpoint ({first[:200]})") from None
    return state


def _damaged_entry(checkpoint: Path) -> str | None:
    """The first entry of a checkpoint's zip archive whose bytes fail their CRC-32, or None. torch.load
    reads the tensors' bytes without checking them, so a flipped bit in a weight would be trained on."""
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return None  # not a zip archive (or a truncated one): torch.load says what it is


class CheckpointNotSaved(UserError):
    """A checkpoint could not be written (a full disk, a folder gone): the previous one is kept."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing beside the final name and renaming: a reader (a
    resume, `stn.zoo add`) sees the previous checkpoint or the new one, never half a file, even
    when the disk fills up while it is written (Lightning's own writer copies a temporary file
    across filesystems)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # through a file of ours: a full disk is then an OSError with its errno (torch's own writer,
            # given a path, says only "unexpected pos ..."), and anything else it raises is caught too
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
            os.replace(partial, target)
        except (OSError, RuntimeError) as error:
            partial.unlink(missing_ok=True)
            kept = (
                f"the previous {target.name} is kept" if target.exists() else f"no {target.name} was written"
            )
            raise CheckpointNotSaved(
                f"{target} could not be written ({getattr(error, 'strerror', None) or first_line(error)}); "
                f"{kept}. Free space, then "
                "resume with the same command and ckpt_path=last"
            ) from None
