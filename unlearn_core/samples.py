"""Where the noisy latents x_t come from: a pool built once per run, then drawn from every step.

- ``anchor_samples``: images the frozen model generates from the anchor prompts (Concept Ablation /
  f-DMU), noised at a random timestep each step;
- ``latents``: the user's own latents of the concept, noised likewise;
- ``trajectory``: intermediate latents of the frozen model's DDIM runs on the target prompts (ESD),
  used as they are at their own timestep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .denoiser import Conditioning, Denoiser, index_cond
from .schedule import TIMESTEP_SAMPLERS, add_noise, ddim_sample


X_SOURCES = ("anchor_samples", "trajectory", "latents")


@dataclass
class LatentPool:
    """Clean latents ``x0`` [N, C, H, W] (noised on draw), or a DDIM trajectory pool (used as is)."""

    x0: Tensor | None = None
    pair_index: Tensor | None = None  # [N]: which prompt pair each sample belongs to (-1: any)
    trajectory: Tensor | None = None  # [K, N, C, H, W]
    trajectory_timesteps: Tensor | None = None  # [K]

    def draw(self, batch: int, num_pairs: int, alphas_cumprod: Tensor, timestep_sampling: str,
             generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(x_t [B, C, H, W], t [B], pair index [B]) for one training batch."""
        if self.trajectory is not None:
            k = torch.randint(0, self.trajectory.shape[0], (batch,), generator=generator)
            n = torch.randint(0, self.trajectory.shape[1], (batch,), generator=generator)
            return self.trajectory[k, n], self.trajectory_timesteps[k], self.pair_index[n]
        n = torch.randint(0, self.x0.shape[0], (batch,), generator=generator)
        t = TIMESTEP_SAMPLERS[timestep_sampling](batch, alphas_cumprod.shape[0], generator)
        noise = torch.randn(self.x0[n].shape, generator=generator)
        pairs = self.pair_index[n]
        free = pairs < 0
        pairs[free] = torch.randint(0, num_pairs, (int(free.sum()),), generator=generator)
        return add_noise(self.x0[n], noise, alphas_cumprod[t]), t, pairs


def build_pool(
    source: str,
    denoiser: Denoiser,
    prompt_conds: Conditioning,
    uncond: Conditioning,
    num_samples: int,
    latent_shape: tuple[int, int, int],
    sample_steps: int,
    guidance: float,
    generator: torch.Generator,
    user_latents: Tensor | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> LatentPool:
    """Build the pool for ``source``; ``prompt_conds`` holds one conditioning row per prompt pair
    (its anchor prompt for ``anchor_samples``, its target prompt for ``trajectory``)."""
    num_pairs = next(iter(prompt_conds.values())).shape[0]
    if source == "latents":
        if user_latents is None or user_latents.numel() == 0:
            raise ValueError("x_t source 'latents' needs latents of the concept: connect a LATENT input")
        if tuple(user_latents.shape[1:2]) != latent_shape[:1]:
            raise ValueError(f"the latents have {user_latents.shape[1]} channels but this model expects "
                             f"{latent_shape[0]}: encode the images with this model's VAE")
        return LatentPool(x0=user_latents.float().cpu(), pair_index=torch.full((user_latents.shape[0],), -1))
    if source not in X_SOURCES:
        raise ValueError(f"unknown x_t source {source!r}; choose one of {', '.join(X_SOURCES)}")
    pair_index = torch.arange(num_samples) % num_pairs
    cond = index_cond(prompt_conds, pair_index)
    batch_uncond = index_cond(uncond, torch.zeros(num_samples, dtype=torch.long))
    done = [0]

    def step(_: int) -> None:
        done[0] += 1
        if on_step is not None:
            on_step(done[0], sample_steps)

    run = ddim_sample(denoiser, cond, batch_uncond, latent_shape, sample_steps, guidance, generator,
                      keep_trajectory=source == "trajectory", on_step=step)
    if source == "anchor_samples":
        return LatentPool(x0=run.final, pair_index=pair_index)
    return LatentPool(pair_index=pair_index, trajectory=run.latents, trajectory_timesteps=run.timesteps)
