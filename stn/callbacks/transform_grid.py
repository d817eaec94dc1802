"""Logs, every validation epoch, the same validation digits before and after the spatial transformer."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.utils import make_grid

from stn.callbacks.validation_images import first_validation_images
from stn.pictures import at_input_size, captioned, labelled_rows, rgb, to_pil


class TransformGridLogger(L.Callback):
    """Writes one image per validation epoch: the input grid on the left, the transformed grid on the
    right, each captioned in the image, de-normalised with the data's mean/std. With `log_theta`,
    also how far theta is from the identity and the mean scale it applies (its determinant), as
    scalars.

    The batch is the first `num_images` of the (unshuffled) validation set, so epochs are comparable.
    """

    def __init__(
        self,
        num_images: int = 32,
        nrow: int = 8,
        mean: float = 0.0,
        std: float = 1.0,
        log_theta: bool = True,
        tag: str = "val/transformed",
        history_images: int = 8,
    ) -> None:
        self.num_images = num_images
        self.nrow = nrow
        self.mean = mean
        self.std = std
        self.log_theta = log_theta
        self.tag = tag
        self.images: torch.Tensor | None = None
        self.history_images = history_images
        self.history: list[tuple[int, torch.Tensor]] = []  # (epoch, the first digits transformed), on the CPU

    def _experiment(self, trainer: L.Trainer):
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.images is None:  # read once
            self.images = first_validation_images(trainer, self.num_images)
        if self.images is None:
            return
        net = pl_module.net
        if getattr(net, "transformer", None) is None:
            rank_zero_warn("TransformGridLogger: the model has no spatial transformer; nothing to log")
            return
        images = self.images.to(pl_module.device)
        was_training = net.training
        net.eval()
        with torch.no_grad():
            transformed, theta = net.transform(images)
        net.train(was_training)
        transformed = at_input_size(transformed, images)
        if self.history_images:
            kept = transformed[: self.history_images].cpu() * self.std + self.mean  # (k, C, H, W)
            self.history.append((trainer.current_epoch, kept.clamp(0, 1)))
        experiment = self._experiment(trainer)
        if experiment is None:  # the history (run-folder files) is kept; the grids are TensorBoard's
            return
        pair = torch.stack([images, transformed]).cpu() * self.std + self.mean  # (2, N, C, H, W)
        grids = [make_grid(part.clamp(0, 1), nrow=self.nrow, padding=2, pad_value=1.0) for part in pair]
        left, right = (
            captioned(grids[0], "input"),
            captioned(grids[1], "transformed: what the classifier sees"),
        )
        separator = torch.ones(3, left.shape[1], 4)
        side_by_side = torch.cat([left, separator, right], dim=2)  # (3, caption + H, 2W + 4)
        step = trainer.global_step
        experiment.add_image(self.tag, side_by_side, global_step=step)
        if self.log_theta:
            identity = net.transformer.identity().to(theta.device)
            distance = (theta.flatten(1)[:, : identity.numel()] - identity).norm(dim=1).mean()
            experiment.add_scalar("val/theta_distance_from_identity", distance.item(), step)
            if theta.shape[-2:] in ((2, 3), (3, 3)):  # affine or projective: a linear part to measure
                scale = torch.linalg.det(theta[:, :2, :2]).mean()
                experiment.add_scalar("val/theta_scale", scale.item(), step)

    def state_dict(self) -> dict:
        """The history so far, in the checkpoint: a resumed run's strip and animation start at epoch 0."""
        return {"history": [(epoch, (kept * 255).round().to(torch.uint8)) for epoch, kept in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [(int(epoch), kept.float() / 255) for epoch, kept in state_dict.get("history", [])]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The transformer's learning at a glance: the same digits transformed at every epoch, as a
        PNG strip (a row per epoch) and a GIF (a frame per epoch) in the run folder, and the strip
        in TensorBoard (`val/transform_history`)."""
        if not self.history or self.images is None or not trainer.is_global_zero:
            return
        inputs = (self.images[: self.history_images].cpu() * self.std + self.mean).clamp(0, 1)
        rows = [make_grid(inputs, nrow=len(inputs), padding=2, pad_value=1.0)]
        rows += [make_grid(kept, nrow=len(kept), padding=2, pad_value=1.0) for _, kept in self.history]
        labels = ["input", *(f"epoch {epoch}" for epoch, _ in self.history)]
        strip = labelled_rows(torch.cat([rgb(row) for row in rows], dim=1), labels, label_width=64)
        folder = Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        to_pil(strip).save(folder / "transform_history.png")
        frames = [
            to_pil(
                captioned(
                    torch.cat([rgb(rows[0]), rgb(row)], dim=1), f"{label}: input above, transformed below"
                )
            )
            for label, row in zip(labels[1:], rows[1:], strict=True)
        ]
        frames[0].save(
            folder / "transform_history.gif", save_all=True, append_images=frames[1:], duration=600, loop=0
        )
        experiment = self._experiment(trainer)
        if experiment is not None:
            experiment.add_image("val/transform_history", strip, global_step=trainer.global_step)
