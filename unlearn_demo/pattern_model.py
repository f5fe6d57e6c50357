"""The second demo domain's model: a pixel-space text-to-image model of grey-scale patterns, cosine schedule.

It reuses the demo's slim UNet and word encoder; what differs is the data and the schedule:

- pixel space: a 24×24 grey image in [-1, 1] is folded space-to-depth into a 9×8×8 "latent"
  (``pixel_unshuffle`` by 3, lossless, nothing to train), so the UNet runs on 8×8 like the demo's and
  the engine's ``resolution`` is 64 (latent side = resolution / 8);
- v-prediction (the demo predicts epsilon), the usual partner of a cosine schedule;
- a cosine noise schedule (Nichol & Dhariwal 2021), whose terminal ᾱ is 2.4e-9, as opposed to the
  demo's SD1.5 schedule (ᾱ_T = 0.0047): the engine's sampler must not divide by √ᾱ_T there
  (``schedule.sampling_start``), and clips x0 to the pixel range the denoiser declares.

The small parts are shipped in ``unlearn_demo/weights_patterns`` (``python -m
unlearn_demo.train_patterns`` retrains them). There is no ComfyUI checkpoint of this model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn_core.denoiser import Conditioning, Denoiser
from unlearn_core.schedule import ddim_sample

from .model import DemoDenoiser, _save, load_unet_and_words, save_words
from .patterns import PATTERNS, SCALES
from .slim_unet import SlimUNet
from .text import WordEncoder

PATTERN_WEIGHTS = Path(__file__).resolve().parent / "weights_patterns"
CONTEXTUAL_WEIGHTS = Path(__file__).resolve().parent / "weights_contextual"  # the same model, contextual text
FOLD = 3  # pixels per latent cell side
LATENT_CHANNELS = FOLD * FOLD
CONTEXT_TOKENS = 8  # start, up to 3 words, end, padding: the UNet sees these conditioning rows, not all 77
RESOLUTION = 64  # the engine's resolution for 8×8 latents (24×24 pixels)
ANCHOR = "pattern"


def cosine_alphas_cumprod(steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """abar_t = prod_{u<=t} (1 - beta_u), beta_u = min(1 - f(u+1)/f(u), max_beta), f(u) = cos^2((u/T+s)/(1+s) pi/2)."""
    u = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0).float()


class PatternModel(nn.Module):
    """Prompt -> pixel-space denoiser -> 24×24 grey image."""

    def __init__(self, unet: SlimUNet, words: WordEncoder):
        super().__init__()
        self.unet, self.words = unet, words
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(), persistent=False)

    def save(self, folder: Path = PATTERN_WEIGHTS) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        _save(self.unet, folder / "unet.safetensors", self.unet.config)
        save_words(self.words, folder)

    @classmethod
    def load(cls, folder: Path = PATTERN_WEIGHTS) -> "PatternModel":
        unet, words = load_unet_and_words(folder, ("unet", "words"), "python -m unlearn_demo.train_patterns")
        return cls(unet, words).eval()

    @staticmethod
    def encode(images: Tensor) -> Tensor:
        """Images [B, 1, 24, 24] in [0, 1] -> latents [B, 9, 8, 8] in [-1, 1] (space-to-depth)."""
        return F.pixel_unshuffle(images * 2 - 1, FOLD)

    @staticmethod
    def decode(latents: Tensor) -> Tensor:
        """Latents -> images [B, 1, 24, 24] in [0, 1]."""
        return (F.pixel_shuffle(latents, FOLD) / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def sample_latents(self, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 4.0,
                       denoiser: Denoiser | None = None) -> Tensor:
        """Latents for ``prompts`` (one each, noise from ``seed``): the engine's DDIM, x0 clipped to [-1, 1]."""
        denoiser = denoiser or PatternDenoiser(self)
        size = (RESOLUTION, RESOLUTION)
        cond = denoiser.encode_prompts(prompts, size)
        uncond = denoiser.encode_prompts([""] * len(prompts), size)
        return ddim_sample(denoiser, cond, uncond, (LATENT_CHANNELS, 8, 8), steps, guidance,
                           torch.Generator().manual_seed(seed)).final

    def generate(self, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 4.0,
                 denoiser: Denoiser | None = None) -> Tensor:
        """Images [B, 1, 24, 24] in [0, 1] for ``prompts`` (one each, noise from ``seed``)."""
        return self.decode(self.sample_latents(prompts, seed, steps, guidance, denoiser))


class PatternDenoiser(DemoDenoiser):
    """The engine's view of the pattern model: the demo's, with 9 pixel channels, v-prediction, the cosine schedule."""

    prediction_type = "v_prediction"
    latent_channels = LATENT_CHANNELS
    data_range = (-1.0, 1.0)  # pixels: the sampler clips its x0 estimates here

    def __init__(self, model: PatternModel):
        super().__init__(model)
        self.alphas_cumprod = cosine_alphas_cumprod()

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], size: tuple[int, int]) -> Conditioning:
        return {"context": self.words(prompts)[:, :CONTEXT_TOKENS].to(self.device)}

    def encode_with_word(self, prompts: list[str], word: str, vector: Tensor, size: tuple[int, int]) -> Conditioning:
        return {"context": self.words(prompts, (word, vector))[:, :CONTEXT_TOKENS].to(self.device)}


def pattern_prompts(concept: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(concept-set text, target prompts with the pattern they should show, kept prompts) for erasing a pattern."""
    if concept not in PATTERNS:
        raise ValueError(f"{concept!r} is not a pattern of the pattern model; choose one of {PATTERNS}")
    targets = [f"{s} {concept}" for s in SCALES]
    keep = [f"{s} {p}" for p in PATTERNS if p != concept for s in SCALES]
    pairs = [(t, f"a {s} {ANCHOR}") for t, s in zip(targets, SCALES)] + [(concept, f"a {ANCHOR}")]
    lines = [f"{t} -> {a}" for t, a in pairs] + [f"keep: {k}" for k in keep]
    return "\n".join(lines) + "\n", [(t, concept) for t in targets], keep
