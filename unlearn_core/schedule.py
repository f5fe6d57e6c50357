"""DDPM noise schedule helpers, timestep sampling and a DDIM sampler over :class:`Denoiser`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .denoiser import Conditioning, Denoiser, cat_cond


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s) with beta = linspace(sqrt(b0), sqrt(b1))^2 (Stable Diffusion)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def add_noise(x0: Tensor, noise: Tensor, abar: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, with abar_t given per sample [B]."""
    a = abar.view(-1, *([1] * (x0.dim() - 1))).to(x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def to_epsilon(output: Tensor, x_t: Tensor, abar: Tensor, prediction_type: str) -> Tensor:
    """eps from the network output: eps itself, or eps = sqrt(abar) v + sqrt(1 - abar) x_t for v-prediction."""
    if prediction_type == "epsilon":
        return output
    a = abar.view(-1, *([1] * (x_t.dim() - 1))).to(x_t)
    return a.sqrt() * output + (1 - a).sqrt() * x_t


TimestepSampler = Callable[[int, int, torch.Generator], Tensor]


def uniform_timesteps(batch: int, num_timesteps: int, generator: torch.Generator) -> Tensor:
    """t ~ U{0, ..., T-1}."""
    return torch.randint(0, num_timesteps, (batch,), generator=generator)


def windowed_timesteps(batch: int, num_timesteps: int, generator: torch.Generator) -> Tensor:
    """p(t) ∝ sigmoid(0.05 (t - 200)) - sigmoid(0.05 (t - 400)) on a 1000-step scale (MACE / f-DMU window)."""
    t = torch.arange(num_timesteps, dtype=torch.float64) * (1000.0 / num_timesteps)
    p = torch.sigmoid(0.05 * (t - 200)) - torch.sigmoid(0.05 * (t - 400))
    return torch.multinomial(p.clamp_min(1e-12), batch, replacement=True, generator=generator)


TIMESTEP_SAMPLERS: dict[str, TimestepSampler] = {
    "uniform": uniform_timesteps,
    "window_200_400": windowed_timesteps,
}


@dataclass
class Trajectory:
    """Every intermediate latent of a DDIM run: ``latents[k]`` is x at ``timesteps[k]`` ([K, B, C, H, W])."""

    latents: Tensor
    timesteps: Tensor
    final: Tensor  # the denoised x_0 estimates at the end, [B, C, H, W]


@torch.no_grad()
def ddim_sample(
    denoiser: Denoiser,
    cond: Conditioning,
    uncond: Conditioning,
    latent_shape: tuple[int, int, int],
    steps: int,
    guidance: float,
    generator: torch.Generator,
    keep_trajectory: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> Trajectory:
    """Deterministic DDIM (eta = 0) with classifier-free guidance, one batched forward per step."""
    batch = next(iter(cond.values())).shape[0]
    abar_all = denoiser.alphas_cumprod
    num_t = abar_all.shape[0]
    ts = torch.linspace(num_t - 1, 0, steps).round().long()
    x = torch.randn((batch, *latent_shape), generator=generator).to(denoiser.device, torch.float32)
    both = cat_cond([cond, uncond])
    kept = []
    for i, t in enumerate(ts):
        if keep_trajectory:
            kept.append(x.detach().cpu())
        abar = abar_all[t].to(x.device)
        t_batch = torch.full((2 * batch,), int(t), device=x.device)
        out = denoiser(torch.cat([x, x]).to(denoiser.dtype), t_batch, both).float()
        eps_c, eps_u = to_epsilon(out, torch.cat([x, x]), abar.expand(2 * batch), denoiser.prediction_type).chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
        abar_next = abar_all[ts[i + 1]].to(x.device) if i + 1 < steps else torch.tensor(1.0, device=x.device)
        x = abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps
        if on_step is not None:
            on_step(i)
    latents = torch.stack(kept) if keep_trajectory else torch.empty(0)
    return Trajectory(latents=latents, timesteps=ts, final=x.detach().cpu())
