"""Variational (f-GAN / Nguyen-Wainwright-Jordan) estimate of an f-divergence.

D_f(P||Q) >= sup_T E_P[T] - E_Q[f*(T)], with T = g_f(v) the output activation of a critic logit v.
The bound is tight at T*(x) = f'(p(x)/q(x)). The critic maximises the bound; the trained model, which
only enters through Q, minimises -E_Q[f*(T)].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

EPS = 1e-6
"""Keeps the reference code's conjugates finite at the edge of their domain."""

TIME_FEATURES = 64
"""Number of sinusoidal timestep features fed to the critic's timestep embedding."""

MIN_SIZE = 8
"""Smallest latent side the critic's three stride-2 convolutions take (64 px images in SD latents)."""


@dataclass(frozen=True)
class VariationalDivergence:
    """Output activation g_f, convex conjugate f*, and their composition f*(g_f(v)) in a stable form."""

    name: str
    activation: Callable[[Tensor], Tensor]
    conjugate: Callable[[Tensor], Tensor]
    fused_conjugate: Callable[[Tensor], Tensor]


def identity_activation(v: Tensor) -> Tensor:
    """g(v) = v (KL and Pearson chi^2)."""
    return v


# --- KL: f(u) = u log u -------------------------------------------------------------------------------


def kl_conjugate(t: Tensor) -> Tensor:
    """f*(t) = exp(t - 1)."""
    return torch.exp(t - 1)


def kl_fused(v: Tensor) -> Tensor:
    """f*(g(v)) = exp(v - 1)."""
    return torch.exp(v - 1)


# --- reverse KL: f(u) = -log u ------------------------------------------------------------------------


def reverse_kl_activation(v: Tensor) -> Tensor:
    """g(v) = -exp(-v)."""
    return -torch.exp(-v)


def reverse_kl_conjugate(t: Tensor) -> Tensor:
    """f*(t) = -1 - log(-t + eps)."""
    return -1 - torch.log(-t + EPS)


def reverse_kl_fused(v: Tensor) -> Tensor:
    """f*(g(v)) = v - 1."""
    return v - 1


# --- squared Hellinger: f(u) = (sqrt(u) - 1)^2 ----------------------------------------------------------


def hellinger_activation(v: Tensor) -> Tensor:
    """g(v) = 1 - exp(-v)."""
    return -torch.expm1(-v)


def hellinger_conjugate(t: Tensor) -> Tensor:
    """f*(t) = t / (1 - t + eps)."""
    return t / (1 - t + EPS)


def hellinger_fused(v: Tensor) -> Tensor:
    """f*(g(v)) = exp(v) - 1."""
    return torch.expm1(v)


# --- Jensen-Shannon (f-GAN convention, 2 JSD): f(u) = u log u - (u + 1) log((u + 1)/2) --------------------


def jensen_shannon_activation(v: Tensor) -> Tensor:
    """g(v) = log 2 + logsigmoid(v)."""
    return math.log(2) + F.logsigmoid(v)


def jensen_shannon_conjugate(t: Tensor) -> Tensor:
    """f*(t) = -log(2 - exp(t) + eps)."""
    return -torch.log(2 - torch.exp(t) + EPS)


def jensen_shannon_fused(v: Tensor) -> Tensor:
    """f*(g(v)) = -log(2 - 2 sigmoid(v)) = softplus(v) - log 2."""
    return F.softplus(v) - math.log(2)


# --- Pearson chi^2: f(u) = (u - 1)^2 -------------------------------------------------------------------


def pearson_chi2_conjugate(t: Tensor) -> Tensor:
    """f*(t) = t^2/4 + t."""
    return t**2 / 4 + t


def pearson_chi2_fused(v: Tensor) -> Tensor:
    """f*(g(v)) = v^2/4 + v."""
    return v**2 / 4 + v


# --- total variation: f(u) = |u - 1| / 2 ----------------------------------------------------------------


def total_variation_activation(v: Tensor) -> Tensor:
    """g(v) = tanh(v) / 2."""
    return torch.tanh(v) / 2


def total_variation_conjugate(t: Tensor) -> Tensor:
    """f*(t) = t  (for |t| <= 1/2)."""
    return t


def total_variation_fused(v: Tensor) -> Tensor:
    """f*(g(v)) = tanh(v) / 2."""
    return torch.tanh(v) / 2


VARIATIONAL: dict[str, VariationalDivergence] = {
    d.name: d
    for d in (
        VariationalDivergence("kl", identity_activation, kl_conjugate, kl_fused),
        VariationalDivergence("reverse_kl", reverse_kl_activation, reverse_kl_conjugate, reverse_kl_fused),
        VariationalDivergence("hellinger", hellinger_activation, hellinger_conjugate, hellinger_fused),
        VariationalDivergence(
            "jensen_shannon", jensen_shannon_activation, jensen_shannon_conjugate, jensen_shannon_fused
        ),
        VariationalDivergence("pearson_chi2", identity_activation, pearson_chi2_conjugate, pearson_chi2_fused),
        VariationalDivergence(
            "total_variation", total_variation_activation, total_variation_conjugate, total_variation_fused
        ),
    )
}


def variational_bound(div: VariationalDivergence, logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """E_p[g(v_p)] - E_q[f*(g(v_q))] (scalar)."""
    return div.activation(logits_p).mean() - div.fused_conjugate(logits_q).mean()


def critic_loss(div: VariationalDivergence, logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """-(E_p[g(v_p)] - E_q[f*(g(v_q))]): the critic minimises it."""
    return -variational_bound(div, logits_p, logits_q)


def generator_loss(div: VariationalDivergence, logits_q: Tensor) -> Tensor:
    """-E_q[f*(g(v_q))]: the only term of the bound that depends on the trained model."""
    return -div.fused_conjugate(logits_q).mean()


def timestep_features(timesteps: Tensor, dim: int, num_timesteps: int) -> Tensor:
    """[cos(t w_k), sin(t w_k)] with w_k = num_timesteps^(-k/(dim/2)), k < dim/2; shape [B, dim] (dim even)."""
    half_dim = dim // 2
    freqs = torch.exp(-math.log(num_timesteps) * torch.arange(half_dim, device=timesteps.device) / half_dim)
    angles = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class Critic(nn.Module):
    """Small conv critic on epsilon-shaped tensors [B, C, H, W] that also sees the timestep."""

    def __init__(self, channels: int = 4, width: int = 64, num_timesteps: int = 1000):
        super().__init__()
        self.num_timesteps = num_timesteps
        self.time_proj = nn.Linear(TIME_FEATURES, width)
        self.conv_in = spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1))
        self.body = nn.Sequential(
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, 3, stride=1, padding=1),
        )

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        """Patch logits [B, 1, max(H, 8)/8, max(W, 8)/8]; timesteps is [B] or a scalar.

        Sides under 8 (latents of images under 64 px) are zero-padded to 8, which the three stride-2
        convolutions need."""
        pad_h, pad_w = max(0, MIN_SIZE - x.shape[-2]), max(0, MIN_SIZE - x.shape[-1])
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        t = timesteps.to(x.device).reshape(-1).expand(x.shape[0])
        t_emb = self.time_proj(timestep_features(t, TIME_FEATURES, self.num_timesteps))
        return self.body(self.conv_in(x) + t_emb[:, :, None, None].to(x.dtype))
