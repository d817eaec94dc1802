"""What the spatial transformer does to the validation images, every validation epoch, and an alarm
when it collapses.

The most common way an STN fails is its transformer collapsing: zooming out until the digit is a
speck, sliding off the canvas, sampling a blank output, theta growing without bound. Found by eye
after the run, it costs the run; measured every epoch, it is one warning line (and, if configured,
the end of the run) the epoch it happens.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from stn.callbacks.validation_images import first_validation_images
from stn.geometry import affine_fit, decompose_linear, outside_fraction

log = logging.getLogger(__name__)

USUAL_CAUSES = (
    "usual causes: the localization net's learning rate too high (model.optimizer.lr x "
    "model.localization_lr_scale), or zero padding that rewards zooming out "
    "(model.transformer.pad_with_background=false)"
)


def transform_figures(
    transformer: torch.nn.Module, images: torch.Tensor, mean: float, std: float, background_level: float
) -> dict[str, torch.Tensor]:
    """Per image (N,): the affine part of the warp (scale, rotation in degrees, shear, translation
    length, all in normalised coordinates), the fraction of the sampling grid outside the input
    canvas, and the fraction of the output that is background; for every transformer (the affine
    part of a projective or spline warp is its least-squares fit)."""
    warped, theta = transformer(images)
    height, width = warped.shape[-2:]
    grid = transformer.sampling_grid(theta, (images.shape[0], images.shape[1], height, width))  # (N, h, w, 2)
    linear, translation = affine_fit(grid)
    figures = decompose_linear(linear)
    figures["translation"] = translation.norm(dim=1)
    figures["outside_fraction"] = outside_fraction(grid)
    pixels = warped * std + mean  # back to [0, 1]
    figures["background_fraction"] = (pixels < background_level).flatten(1).float().mean(dim=1)
    figures["theta_finite"] = torch.isfinite(theta.flatten(1)).all(dim=1).float()
    return figures


class TransformHealth(L.Callback):
    """Logs, per validation epoch, the mean of each transform figure (`transform/<figure>`, to every
    logger) and its spread over the validation images (TensorBoard histograms,
    `transform_spread/<figure>`: a tag of its own, since TensorBoard's default loader shows one
    kind of data per tag and would hide a histogram that shares its scalar's tag), measured on up
    to `max_images` validation images; then checks the means
    against the thresholds. A breach is one warning line naming what happened and the usual causes;
    with `stop_on_collapse` the run also stops there (its checkpoints and metrics are kept)."""

    def __init__(
        self,
        mean: float = 0.0,
        std: float = 1.0,
        max_images: int = 2048,
        min_scale: float = 0.2,
        max_scale: float = 2.5,
        max_outside_fraction: float = 0.75,
        max_background_fraction: float = 0.97,
        background_level: float = 0.1,
        stop_on_collapse: bool = False,
    ) -> None:
        self.mean, self.std = mean, std
        self.max_images = max_images
        self.min_scale, self.max_scale = min_scale, max_scale
        self.max_outside_fraction = max_outside_fraction
        self.max_background_fraction = max_background_fraction
        self.background_level = background_level
        self.stop_on_collapse = stop_on_collapse
        self.alarms: list[str] = []  # every alarm raised, in order (for tests and callers)
        self.images: torch.Tensor | None = None  # the first validation images, read once

    def breaches(self, means: dict[str, float]) -> list[str]:
        """What is wrong with an epoch's mean figures, one phrase each (empty: healthy)."""
        found = []
        if means["theta_finite"] < 1:
            found.append("theta is not finite for some images")
        if means["scale"] > self.max_scale:
            found.append(f"it zooms out (mean scale {means['scale']:.2f} > {self.max_scale})")
        if means["scale"] < self.min_scale:
            found.append(f"it zooms into a speck (mean scale {means['scale']:.2f} < {self.min_scale})")
        if means["outside_fraction"] > self.max_outside_fraction:
            found.append(
                f"{100 * means['outside_fraction']:.0f}% of its sampling grid is outside the image "
                f"(limit {100 * self.max_outside_fraction:.0f}%)"
            )
        if means["background_fraction"] > self.max_background_fraction:
            found.append(
                f"{100 * means['background_fraction']:.1f}% of its output is background "
                f"(limit {100 * self.max_background_fraction:.1f}%)"
            )
        return found

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        transformer = getattr(pl_module.net, "transformer", None)
        if trainer.sanity_checking or transformer is None:
            return
        if self.images is None:  # read once, kept on the module's device (no copy each epoch)
            images = first_validation_images(trainer, self.max_images)
            self.images = None if images is None else images.to(pl_module.device)
        if self.images is None:
            return
        images = self.images.to(pl_module.device)  # a no-op unless the module has moved
        was_training = transformer.training
        transformer.eval()
        with torch.no_grad():
            figures = transform_figures(transformer, images, self.mean, self.std, self.background_level)
        transformer.train(was_training)
        finite = {name: values[torch.isfinite(values)] for name, values in figures.items()}
        means = {
            name: float(values.mean()) if values.numel() else float("nan") for name, values in finite.items()
        }
        pl_module.log_dict({f"transform/{name}": value for name, value in means.items()}, sync_dist=True)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                for name, values in finite.items():
                    if name != "theta_finite" and values.numel():
                        logger.experiment.add_histogram(
                            f"transform_spread/{name}", values.cpu(), trainer.global_step
                        )
        found = self.breaches(means)
        if not found:
            return
        alarm = f"transform collapse in epoch {trainer.current_epoch}: {'; '.join(found)}; {USUAL_CAUSES}"
        self.alarms.append(alarm)
        log.warning(alarm)
        if self.stop_on_collapse:
            trainer.should_stop = True
            log.error(
                "The run stops here (callbacks.transform_health.stop_on_collapse=true); its checkpoints "
                "and metrics so far are kept."
            )
