"""A small CNN that reads a demo domain's attributes (by default shape, colour, background) off an image."""

from __future__ import annotations

import torch
from torch import nn

from .shapes import ATTRIBUTES


class AttributeClassifier(nn.Module):
    """Image [B, channels, H, W] in [0, 1] -> one logit vector per attribute (one head per entry of ``attributes``)."""

    def __init__(self, width: int = 32, attributes: dict[str, tuple[str, ...]] | None = None, channels: int = 3):
        super().__init__()
        self.attributes = {name: tuple(values) for name, values in (attributes or ATTRIBUTES).items()}
        layers, c_in = [], channels
        for c_out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(c_in, len(values)) for name, values in self.attributes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images * 2 - 1)
        return {name: head(f) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, list[str]]:
        """The most likely value of each attribute, per image."""
        logits = self.eval()(images)
        return {name: [self.attributes[name][i] for i in out.argmax(-1).tolist()] for name, out in logits.items()}

    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 2·width], for distribution distances (KID)."""
        return self.eval().features(images * 2 - 1)
