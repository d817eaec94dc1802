"""The tutorial's CNN classifier, and the STN classifier that puts a spatial transformer in front of it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stn.errors import check, integers
from stn.models.layers import mlp, paper_input_pool
from stn.models.transformer import WarpingTransformer


class ConvClassifier(nn.Module):
    """Conv(1,10,k5) -> Pool -> ReLU -> Conv(10,20,k5) -> Dropout2d -> Pool -> ReLU
    -> Linear(320,50) -> ReLU -> Dropout -> Linear(50,10): the PyTorch STN tutorial's classifier."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        channels: tuple[int, int] = (10, 20),
        hidden: int = 50,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check(self, integers(16), image_size=image_size)
        self.num_classes = num_classes
        first, second = channels
        feature_size = ((image_size - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, first, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(first, second, kernel_size=5),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(
            nn.Flatten(),  # (N, second * S * S), 320 for 28x28
            nn.Linear(second * feature_size * feature_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class PaperConvClassifier(nn.Module):
    """The STN paper's CNN for distorted MNIST (Jaderberg et al. 2015, sec. 4.1 and appendix A, as
    re-implementations restate it, e.g. hvy/chainer-spatial-transformer-networks, models.py): the
    input average-pooled by `input_pool` (the paper downsamples the transformer's 42x42 RTS output
    x2), then Conv(9x9, 32) -> MaxPool(2) -> ReLU -> Conv(7x7, 64) -> MaxPool(2) -> ReLU -> Linear
    to the classes. The convolutions are padded to keep their size, so a 21x21 input fits.
    `input_pool=None`: the paper's (x2 on its 42x42 and 60x60 canvases, none on 28x28)."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 42,
        num_classes: int = 10,
        input_pool: int | None = None,
        channels: tuple[int, int] = (32, 64),
        kernel_sizes: tuple[int, int] = (9, 7),
    ) -> None:
        super().__init__()
        input_pool = paper_input_pool(image_size) if input_pool is None else input_pool
        check(self, integers(1), input_pool=input_pool)
        pooled = image_size // input_pool
        after_pooling = f"at least 4x4 after the input pooling of {input_pool}"
        check(self, integers(4 * input_pool).because(after_pooling), image_size=image_size)
        self.num_classes = num_classes
        first, second = channels
        feature_size = pooled // 2 // 2  # two maxpool(2) after size-keeping convolutions
        self.features = nn.Sequential(
            nn.AvgPool2d(input_pool) if input_pool > 1 else nn.Identity(),
            nn.Conv2d(in_channels, first, kernel_size=kernel_sizes[0], padding=kernel_sizes[0] // 2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(first, second, kernel_size=kernel_sizes[1], padding=kernel_sizes[1] // 2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(
            nn.Flatten(),  # (N, second * S * S), 64 * 5 * 5 for RTS
            nn.Linear(second * feature_size * feature_size, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class FullyConnectedClassifier(nn.Module):
    """The paper's FCN baseline: the flattened image through fully connected ReLU layers."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        hidden: Sequence[int] = (128, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        sizes = [in_channels * image_size * image_size, *hidden, num_classes]
        self.layers = nn.Sequential(nn.Flatten(), *mlp(sizes, dropout))  # (N, C * H * W) -> (N, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class STNClassifier(nn.Module):
    """An optional spatial transformer followed by a classifier; without one it is the CNN baseline."""

    def __init__(self, classifier: nn.Module, transformer: WarpingTransformer | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.classifier = classifier

    def transform(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images the classifier sees, and theta (None without a transformer)."""
        if self.transformer is None:
            return images, None
        return self.transformer(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        transformed, _ = self.transform(images)
        return self.classifier(transformed)


def parameter_counts(net: nn.Module) -> str:
    """Trainable parameters of the classifier, the transformer and both: comparable models keep
    these close, as the paper does."""
    parts = {name: sum(p.numel() for p in part.parameters()) for name, part in net.named_children()}
    parts["total"] = sum(p.numel() for p in net.parameters())
    return ", ".join(f"{name} {count:,}" for name, count in parts.items())
