"""The demo's denoiser: a narrow UNet that is exactly a slim SD1.5 UNet with zero-padded channels.

ComfyUI (and diffusers' single-file loader) detect SD1.x from shapes: ``model_channels`` 320 and
``context_dim`` 768; depth and number of levels are free. The slimmest such UNet (one level, one
ResBlock and one transformer per block) still costs 26M parameters per position, too much to train on
a CPU. So we train a network that uses only the first ``width`` = 10·m of the 320 channels:

- GroupNorm(32, 320) groups 10 consecutive channels, so the active channels fill m whole groups and
  the zero channels fill the others, which normalise to zero (weight and bias 0): GroupNorm(m, 10·m).
  The skip concatenation (640 channels, groups of 20) keeps whole groups when m is even.
- Attention heads are 40 wide; the active inner channels fill m/4 whole heads, the rest attend to
  zero values and give zero.
- LayerNorm over the 320 inner channels sees the zeros, so its statistics divide by 320
  (:class:`PaddedLayerNorm`).
- The GEGLU feed-forward and the time embedding use the first ``hidden``/``time_hidden`` units.

:func:`to_ldm` writes the 320-channel ``model.diffusion_model.*`` state dict (zeros outside the active
block), which ComfyUI's stock checkpoint loader detects as SD1.5 and runs with the same outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODEL_CHANNELS = 320
CONTEXT_DIM = 768
HEAD_DIM = 40
FF_INNER = 4 * MODEL_CHANNELS
TIME_DIM = 4 * MODEL_CHANNELS
PREFIX = "model.diffusion_model."


def timestep_embedding(t: torch.Tensor, dim: int = MODEL_CHANNELS, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t·f_i), sin(t·f_i)] with f_i = max_period^(-i/half), i < half = dim/2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class PaddedLayerNorm(nn.Module):
    """LayerNorm of a vector padded with zeros to ``total`` entries, evaluated on its non-zero part."""

    def __init__(self, width: int, total: int = MODEL_CHANNELS, eps: float = 1e-5):
        super().__init__()
        self.total, self.eps = total, eps
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.sum(-1, keepdim=True) / self.total
        var = (x * x).sum(-1, keepdim=True) / self.total - mean * mean
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, time_hidden: int):
        super().__init__()
        # 32 groups in the full layout: groups of 10 for 320 channels, of 20 for the 640-channel concatenation
        self.in_layers = nn.Sequential(nn.GroupNorm(c_out // 10, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(time_hidden, c_out))
        self.out_layers = nn.Sequential(nn.GroupNorm(c_out // 10, c_out), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip_connection = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    def __init__(self, width: int, context_dim: int):
        super().__init__()
        self.heads = width // HEAD_DIM
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context_dim, width, bias=False)
        self.to_v = nn.Linear(context_dim, width, bias=False)
        self.to_out = nn.Sequential(nn.Linear(width, width), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        def split(t):
            return t.unflatten(-1, (self.heads, HEAD_DIM)).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(width, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class TransformerBlock(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.attn1 = Attention(width, width)
        self.attn2 = Attention(width, CONTEXT_DIM)
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(GEGLU(width, hidden), nn.Dropout(0.0), nn.Linear(hidden, width))
        self.norm1, self.norm2, self.norm3 = (PaddedLayerNorm(width) for _ in range(3))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff.net(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.GroupNorm(width // 10, width, eps=1e-6)
        self.proj_in = nn.Conv2d(width, width, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(width, hidden)])
        self.proj_out = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context)
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class Stage(nn.ModuleList):
    """A ResBlock followed by a SpatialTransformer (ComfyUI's TimestepEmbedSequential)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self[1](self[0](x, emb), context)


class SlimUNet(nn.Module):
    """The active part of a one-level SD1.5 UNet: ``width`` channels of 320 (width = 10·m, m a multiple of 4)."""

    def __init__(self, width: int = 80, hidden: int = 320, time_hidden: int = 320, latent_channels: int = 4):
        super().__init__()
        if width % 40 or not 40 <= width <= MODEL_CHANNELS:
            raise ValueError(f"width must be a multiple of 40 between 40 and 320, got {width}")
        self.config = dict(width=width, hidden=hidden, time_hidden=time_hidden, latent_channels=latent_channels)
        self.time_embed = nn.Sequential(nn.Linear(MODEL_CHANNELS, time_hidden), nn.SiLU(),
                                        nn.Linear(time_hidden, time_hidden))
        self.input_blocks = nn.ModuleList([
            nn.ModuleList([nn.Conv2d(latent_channels, width, 3, padding=1)]),
            Stage([ResBlock(width, width, time_hidden), SpatialTransformer(width, hidden)]),
        ])
        self.middle_block = nn.ModuleList([ResBlock(width, width, time_hidden), SpatialTransformer(width, hidden),
                                           ResBlock(width, width, time_hidden)])
        self.output_blocks = nn.ModuleList(
            [Stage([ResBlock(2 * width, width, time_hidden), SpatialTransformer(width, hidden)]) for _ in range(2)])
        self.out = nn.Sequential(nn.GroupNorm(width // 10, width), nn.SiLU(),
                                 nn.Conv2d(width, latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t))
        h = self.input_blocks[0][0](x)
        skips = [h]
        h = self.input_blocks[1](h, emb, context)
        skips.append(h)
        res1, attn, res2 = self.middle_block
        h = res2(attn(res1(h, emb), context), emb)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)


def _roles(key: str, ndim: int) -> tuple[str, ...]:
    """What each dimension of the slim tensor ``key`` is, in the 320-channel layout."""
    if key.startswith("time_embed.0"):
        roles = ("time", "keep")
    elif key.startswith("time_embed.2"):
        roles = ("time", "time")
    elif "emb_layers" in key:
        roles = ("ch", "time")
    elif key.startswith("input_blocks.0.0"):
        roles = ("ch", "keep")
    elif key.startswith("out.2"):
        roles = ("keep", "ch")
    elif "ff.net.0.proj" in key:
        roles = ("geglu", "ch")
    elif "ff.net.2" in key:
        roles = ("ch", "ff")
    elif "attn2.to_k" in key or "attn2.to_v" in key:
        roles = ("ch", "keep")
    elif key.startswith("output_blocks") and ".0.in_layers.0" in key:
        roles = ("cat",)
    elif key.startswith("output_blocks") and (".0.in_layers.2" in key or ".0.skip_connection" in key):
        roles = ("ch", "cat")
    else:
        roles = ("ch", "ch")
    return (roles + ("keep", "keep"))[:ndim]


def to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Slim SlimUNet state dict -> the 320-channel ``model.diffusion_model.*`` one, zeros outside the active block."""
    w, hidden, th = config["width"], config["hidden"], config["time_hidden"]
    layout = {  # role -> (full size, indices the slim entries occupy)
        "ch": (MODEL_CHANNELS, torch.arange(w)),
        "cat": (2 * MODEL_CHANNELS, torch.cat([torch.arange(w), MODEL_CHANNELS + torch.arange(w)])),
        "time": (TIME_DIM, torch.arange(th)),
        "ff": (FF_INNER, torch.arange(hidden)),
        "geglu": (2 * FF_INNER, torch.cat([torch.arange(hidden), FF_INNER + torch.arange(hidden)])),
    }
    out = {}
    for key, small in state.items():
        sizes, index = [], []
        for d, role in enumerate(_roles(key, small.dim())):
            size, idx = layout.get(role, (small.shape[d], torch.arange(small.shape[d])))
            sizes.append(size)
            index.append(idx)
        big = torch.zeros(sizes, dtype=small.dtype)
        big[torch.meshgrid(*index, indexing="ij")] = small
        out[PREFIX + key] = big
    return out
