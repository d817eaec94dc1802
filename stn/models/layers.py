"""Small building blocks shared by the classifiers and the localization nets."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int], dropout: float = 0.0) -> list[nn.Module]:
    """Linear -> ReLU (-> Dropout) between each pair of `sizes`, the last Linear bare."""
    layers: list[nn.Module] = []
    for index, (inputs, outputs) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(inputs, outputs))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
    return layers


def identity_head(in_features: int, identity: torch.Tensor) -> nn.Linear:
    """A Linear layer that outputs exactly `identity` whatever its input (zero weight)."""
    head = nn.Linear(in_features, identity.numel())
    nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(identity.flatten())
    return head


def paper_input_pool(image_size: int) -> int:
    """How much the paper's distorted-MNIST nets pool their input: x2 on its large canvases (RTS
    42x42, TC 60x60), not on 28x28 digits."""
    return 2 if image_size >= 40 else 1
