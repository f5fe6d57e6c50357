"""From denoiser outputs to a scalar erasure loss.

The trainer compares the trained model's prediction under the target prompt with the frozen model's
prediction under the anchor prompt, reduces the difference to one number S per sample, and feeds
r = weight * S / sigma^2 to a closed-form divergence's loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedule import flow_coordinates
from .closed_form import ClosedFormDivergence


def squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """S_i = sum_c (pred - target)^2 averaged over spatial positions; shape [B]. Inputs [B, C, *spatial]."""
    return (pred - target).pow(2).sum(dim=1).flatten(1).mean(dim=1)


def erasure_loss(
    S: Tensor, divergence: ClosedFormDivergence, sigma: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """Mean over the batch of divergence.loss(weight * S / sigma^2); weight is an optional per-sample factor [B]."""
    r = S / sigma**2
    if weight is not None:
        r = weight * r
    return divergence.loss(r).mean()


def kl_timestep_weight(alphas_cumprod: Tensor, prediction_type: str = "epsilon") -> Tensor:
    """lambda_t = beta_t / (alpha_t (1 - abar_t)) * |d eps / d output|^2 = ||dmu||^2 / (beta_t ||d output||^2), mean 1; [T].

    |d eps / d output|^2 at fixed x_t: 1 for epsilon, abar_t for v, (1 - s_t)^2 for a flow velocity
    (s_t the flow time, ``schedule.flow_coordinates``).
    """
    abar = alphas_cumprod.double()
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    alpha = abar / abar_prev
    lam = (1 - alpha) / (alpha * (1 - abar)) * _eps_per_output_squared(abar, prediction_type)
    return (lam / lam.mean()).to(alphas_cumprod.dtype)


def _eps_per_output_squared(abar: Tensor, prediction_type: str) -> Tensor:
    if prediction_type == "epsilon":
        return torch.ones_like(abar)
    if prediction_type == "v_prediction":
        return abar
    if prediction_type == "flow":
        return (1 - flow_coordinates(abar)[0]) ** 2
    raise ValueError(f"unknown prediction type {prediction_type!r}")
