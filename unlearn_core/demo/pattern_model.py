"""The second demo domain's model: a pixel-space text-to-image model of grey-scale patterns, cosine schedule.

It reuses the demo's slim UNet and word encoder; what differs is the data and the schedule:

- pixel space: a 32×32 grey image in [-1, 1] is folded space-to-depth into a 16×8×8 "latent"
  (``pixel_unshuffle`` by 4, lossless, nothing to train), so the UNet runs on 8×8 like the demo's and
  the engine's ``resolution`` is 64 (latent side = resolution / 8);
- a cosine noise schedule (Nichol & Dhariwal 2021), whose terminal ᾱ is 2.4e-9, as opposed to the
  demo's SD1.5 schedule (ᾱ_T = 0.0047); the engine has to sample it without dividing by √ᾱ_T.

The small parts are shipped in ``unlearn_core/demo/weights_patterns`` (``python -m
unlearn_core.demo.train_patterns`` retrains them). There is no ComfyUI checkpoint of this model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..denoiser import Denoiser
from .model import DemoDenoiser, _load, _save
from .patterns import PATTERNS, SCALES
from .slim_unet import SlimUNet
from .text import WordEncoder

PATTERN_WEIGHTS = Path(__file__).resolve().parent / "weights_patterns"
FOLD = 4  # pixels per latent cell side
LATENT_CHANNELS = FOLD * FOLD
RESOLUTION = 64  # the engine's resolution for 8×8 latents (32×32 pixels)
ANCHOR = "pattern"


def cosine_alphas_cumprod(steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """abar_t = prod_{u<=t} (1 - beta_u), beta_u = min(1 - f(u+1)/f(u), max_beta), f(u) = cos^2((u/T + s)/(1 + s) pi/2)."""
    u = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0).float()


class PatternModel(nn.Module):
    """Prompt -> pixel-space denoiser -> 32×32 grey image."""

    def __init__(self, unet: SlimUNet, words: WordEncoder):
        super().__init__()
        self.unet, self.words = unet, words
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(), persistent=False)

    def save(self, folder: Path = PATTERN_WEIGHTS) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        _save(self.unet, folder / "unet.safetensors", self.unet.config)
        _save(self.words, folder / "words.safetensors", {"token_ids": self.words.token_ids})

    @classmethod
    def load(cls, folder: Path = PATTERN_WEIGHTS) -> "PatternModel":
        missing = [n for n in ("unet", "words") if not (folder / f"{n}.safetensors").is_file()]
        if missing:
            raise FileNotFoundError(f"pattern model weights {missing} missing in {folder}: "
                                    "train them with `python -m unlearn_core.demo.train_patterns`")
        state, meta = _load(folder / "unet.safetensors")
        unet = SlimUNet(**meta)
        unet.load_state_dict(state)
        state, meta = _load(folder / "words.safetensors")
        words = WordEncoder(meta["token_ids"])
        words.load_state_dict(state)
        return cls(unet, words).eval()

    @staticmethod
    def encode(images: Tensor) -> Tensor:
        """Images [B, 1, 32, 32] in [0, 1] -> latents [B, 16, 8, 8] in [-1, 1] (space-to-depth)."""
        return F.pixel_unshuffle(images * 2 - 1, FOLD)

    @staticmethod
    def decode(latents: Tensor) -> Tensor:
        """Latents -> images [B, 1, 32, 32] in [0, 1]."""
        return (F.pixel_shuffle(latents, FOLD) / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def sample_latents(self, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 4.0,
                       denoiser: Denoiser | None = None) -> Tensor:
        """DDIM (eta = 0) with classifier-free guidance, x0 clipped to the data range [-1, 1] at every step."""
        denoiser = denoiser or PatternDenoiser(self)
        abar_all = denoiser.alphas_cumprod
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((len(prompts), LATENT_CHANNELS, 8, 8), generator=gen)
        cond = torch.cat([denoiser.encode_prompts(prompts, (RESOLUTION, RESOLUTION))["context"],
                          denoiser.encode_prompts([""] * len(prompts), (RESOLUTION, RESOLUTION))["context"]])
        ts = torch.linspace(len(abar_all) - 1, 0, steps).round().long()
        for i, t in enumerate(ts):
            abar = abar_all[t]
            eps_c, eps_u = denoiser(torch.cat([x, x]), t.repeat(2 * len(prompts)), {"context": cond}).chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
            x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()  # the noise consistent with the clipped x0
            abar_next = abar_all[ts[i + 1]] if i + 1 < steps else torch.tensor(1.0)
            x = abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps
        return x

    def generate(self, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 4.0,
                 denoiser: Denoiser | None = None) -> Tensor:
        """Images [B, 1, 32, 32] in [0, 1] for ``prompts`` (one each, noise from ``seed``)."""
        return self.decode(self.sample_latents(prompts, seed, steps, guidance, denoiser))


class PatternDenoiser(DemoDenoiser):
    """The engine's view of the pattern model: the demo's, with 16 pixel channels and the cosine schedule."""

    latent_channels = LATENT_CHANNELS

    def __init__(self, model: PatternModel):
        super().__init__(model)
        self.alphas_cumprod = cosine_alphas_cumprod()


def pattern_prompts(concept: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(concept-set text, target prompts with the pattern they should show, kept prompts) for erasing a pattern."""
    if concept not in PATTERNS:
        raise ValueError(f"{concept!r} is not a pattern of the pattern model; choose one of {PATTERNS}")
    targets = [f"{s} {concept}" for s in SCALES]
    keep = [f"{s} {p}" for p in PATTERNS if p != concept for s in SCALES]
    pairs = [(t, f"a {s} {ANCHOR}") for t, s in zip(targets, SCALES)] + [(concept, f"a {ANCHOR}")]
    lines = [f"{t} -> {a}" for t, a in pairs] + [f"keep: {k}" for k in keep]
    return "\n".join(lines) + "\n", [(t, concept) for t in targets], keep
