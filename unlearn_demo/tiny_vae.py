"""The demo's autoencoder: the TAESD architecture at a reduced width, inflated to TAESD's 64 channels.

TAESD (Tiny AutoEncoder for Stable Diffusion) has only convolutions and ReLUs, so a network of width
``w`` < 64 is *exactly* a 64-channel TAESD whose extra channels hold zero weights (ReLU(0) = 0).
We train the narrow one (16x cheaper at w = 16) and write the wide one, whose keys
(``taesd_encoder.*`` / ``taesd_decoder.*``) ComfyUI's stock VAE loader recognises.
"""

from __future__ import annotations

import torch
from torch import nn

FULL_WIDTH = 64
LATENT_CHANNELS = 4


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """relu(conv-relu-conv-relu-conv(x) + x)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(), _conv(width, width))
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + x)


def encoder(w: int) -> nn.Sequential:
    """Image in [0, 1] -> latent at 1/8 resolution."""
    def down():
        return _conv(w, w, stride=2, bias=False)
    return nn.Sequential(
        _conv(3, w), Block(w),
        down(), Block(w), Block(w), Block(w),
        down(), Block(w), Block(w), Block(w),
        down(), Block(w), Block(w), Block(w),
        _conv(w, LATENT_CHANNELS),
    )


def decoder(w: int) -> nn.Sequential:
    """Latent -> image in [0, 1] (before clamping) at 8x resolution."""
    def up():
        return [nn.Upsample(scale_factor=2), _conv(w, w, bias=False)]
    return nn.Sequential(
        Clamp(), _conv(LATENT_CHANNELS, w), nn.ReLU(),
        Block(w), Block(w), Block(w), *up(),
        Block(w), Block(w), Block(w), *up(),
        Block(w), Block(w), Block(w), *up(),
        Block(w), _conv(w, 3),
    )


class TinyAutoencoder(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.width = width
        self.taesd_encoder = encoder(width)
        self.taesd_decoder = decoder(width)


def inflate(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A narrow TinyAutoencoder state dict -> the 64-channel TAESD one (zeros outside the narrow block)."""
    full = TinyAutoencoder(FULL_WIDTH).state_dict()
    out = {}
    for key, small in state.items():
        big = torch.zeros_like(full[key])
        big[tuple(slice(0, s) for s in small.shape)] = small
        out[key] = big
    return out
