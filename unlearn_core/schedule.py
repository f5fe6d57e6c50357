"""Noise schedule helpers, timestep sampling and a DDIM sampler over :class:`Denoiser`.

The engine works in variance-preserving (DDPM) coordinates, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.
Any Gaussian path ``x = a x_0 + b eps`` is one of these after dividing by ``sqrt(a^2 + b^2)``, with the same
signal-to-noise ratio ``abar / (1 - abar) = a^2 / b^2``; rectified flow (``a = 1 - s``, ``b = s``) is the case
that flow-matching models (Flux, SD3) use, and :func:`flow_coordinates` converts between the two.
"""

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


def x0_eps_from_epsilon(eps: Tensor, x_t: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar): exact, but multiplies the network's errors by 1/sqrt(abar)."""
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt(), eps


def x0_eps_from_v(v: Tensor, x_t: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """x0 = sqrt(abar) x_t - sqrt(1 - abar) v, eps = sqrt(1 - abar) x_t + sqrt(abar) v (safe at abar = 0)."""
    return a.sqrt() * x_t - (1 - a).sqrt() * v, (1 - a).sqrt() * x_t + a.sqrt() * v


def flow_coordinates(abar: Tensor) -> tuple[Tensor, Tensor]:
    """(s, scale) with s = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar)): x_flow = scale x_vp, scale = 1 / (sqrt(abar) + sqrt(1 - abar))."""
    scale = 1 / (abar.sqrt() + (1 - abar).sqrt())
    return (1 - abar).sqrt() * scale, scale


def abar_from_flow_sigma(sigma: Tensor) -> Tensor:
    """abar = (1 - s)^2 / ((1 - s)^2 + s^2): the DDPM schedule with the rectified-flow path's SNR at s."""
    return (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma**2)


def x0_eps_from_flow(u: Tensor, x_t: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """Velocity u = eps - x0 on x_flow = (1 - s) x0 + s eps: x0 = x_flow - s u, eps = x_flow + (1 - s) u (safe at s = 1)."""
    s, scale = flow_coordinates(a)
    x_flow = scale * x_t
    return x_flow - s * u, x_flow + (1 - s) * u


PARAMETRISATIONS: dict[str, Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "epsilon": x0_eps_from_epsilon,
    "v_prediction": x0_eps_from_v,
    "flow": x0_eps_from_flow,
}
"""(x0, eps) from a network output per ``Denoiser.prediction_type``, with x_t in DDPM coordinates."""

EPSILON_MIN_ABAR = 4e-3
"""An epsilon model's sampling starts at the last timestep with abar >= this (SD1.x ends at 4.7e-3): at
cosine's 2.4e-9 or zero-terminal-SNR's 4.9e-8 the division in ``x0_eps_from_epsilon`` turns a 1 %
error of the network into thousands."""


def predict_x0_eps(output: Tensor, x_t: Tensor, abar: Tensor, prediction_type: str) -> tuple[Tensor, Tensor]:
    """(x0, eps) from the network ``output`` for ``x_t`` at ``abar`` (per sample [B]), by ``prediction_type``."""
    a = abar.view(-1, *([1] * (x_t.dim() - 1))).to(x_t)
    return PARAMETRISATIONS[prediction_type](output, x_t, a)


def sampling_start(alphas_cumprod: Tensor, prediction_type: str) -> int:
    """The first (largest) timestep to sample from: T-1, or for epsilon the last one with abar >= EPSILON_MIN_ABAR."""
    last = alphas_cumprod.shape[0] - 1
    if prediction_type != "epsilon" or alphas_cumprod[last] >= EPSILON_MIN_ABAR:
        return last
    return int((alphas_cumprod >= EPSILON_MIN_ABAR).nonzero().max())


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
    """Deterministic DDIM (eta = 0) with classifier-free guidance, one batched forward per step.

    On a flow path this is Euler's method on the flow's ODE (the same update in DDPM coordinates).

    x0 is predicted in each parametrisation's safe form (see ``PARAMETRISATIONS``, ``sampling_start``) and
    clipped to ``denoiser.data_range`` where the model states one (pixel-space models; latents have none).
    """
    batch = next(iter(cond.values())).shape[0]
    if denoiser.guidance_distilled:
        guidance = 1.0  # the network takes its guidance as an input (encode_prompts): no second prediction
    abar_all = denoiser.alphas_cumprod
    start = sampling_start(abar_all, denoiser.prediction_type)
    ts = torch.linspace(start, 0, steps).round().long()
    x = torch.randn((batch, *latent_shape), generator=generator).to(denoiser.device, torch.float32)
    both = cat_cond([cond, uncond]) if guidance != 1 else cond
    kept = []
    for i, t in enumerate(ts):
        if keep_trajectory:
            kept.append(x.detach().cpu())
        abar = abar_all[t].to(x.device)
        copies = 2 if guidance != 1 else 1
        t_batch = torch.full((copies * batch,), int(t), device=x.device)
        out = denoiser(x.repeat(copies, 1, 1, 1).to(denoiser.dtype), t_batch, both).float()
        if copies == 2:
            out_c, out_u = out.chunk(2)
            out = out_u + guidance * (out_c - out_u)  # every parametrisation is linear in the output
        x0, eps = predict_x0_eps(out, x, abar.expand(batch), denoiser.prediction_type)
        if denoiser.data_range is not None:
            x0 = x0.clamp(*denoiser.data_range)
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        abar_next = abar_all[ts[i + 1]].to(x.device) if i + 1 < steps else torch.tensor(1.0, device=x.device)
        x = abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps
        if on_step is not None:
            on_step(i)
    latents = torch.stack(kept) if keep_trajectory else torch.empty(0)
    return Trajectory(latents=latents, timesteps=ts, final=x.detach().cpu())
