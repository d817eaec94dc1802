"""The first validation images, the one way the callbacks that watch the transformer fetch them:
the validation set is not shuffled, so they are the same digits every epoch and epochs compare."""

from __future__ import annotations

import lightning as L
import torch


def first_validation_images(trainer: L.Trainer, count: int) -> torch.Tensor | None:
    """(count, C, H, W) the first `count` images of the (first) validation loader, on the CPU, or
    None where there is no validation loader."""
    loader = trainer.val_dataloaders
    if isinstance(loader, list | tuple):
        loader = loader[0] if loader else None
    if loader is None:
        return None
    chunks, found = [], 0
    for batch in loader:
        chunks.append(batch[0].detach().cpu())
        found += len(chunks[-1])
        if found >= count:
            break
    return torch.cat(chunks)[:count] if chunks else None
