"""A small CNN that reads the demo attributes (shape, colour, background) off a 64x64 image."""

from __future__ import annotations

import torch
from torch import nn

from .shapes import ATTRIBUTES


class AttributeClassifier(nn.Module):
    """Image [B, 3, 64, 64] in [0, 1] -> one logit vector per attribute."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(c_in, len(values)) for name, values in ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images * 2 - 1)
        return {name: head(f) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, list[str]]:
        """The most likely value of each attribute, per image."""
        logits = self.eval()(images)
        return {name: [ATTRIBUTES[name][i] for i in out.argmax(-1).tolist()] for name, out in logits.items()}

    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 2·width], for distribution distances (KID)."""
        return self.eval().features(images * 2 - 1)
