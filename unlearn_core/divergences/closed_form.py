"""Closed-form f-divergences between two Gaussians that share a covariance s^2 I.

For P = N(mu_p, s^2 I) and Q = N(mu_q, s^2 I), every f-divergence D_f(P||Q) = E_Q[f(p/q)] depends only on
r = ||mu_p - mu_q||^2 / s^2. The key identity is E_Q[(p/q)^a] = exp(a(a-1) r/2).

Each entry carries the generator f, the exact value D_f as a function of r, and the training loss the
reference code (f-DMU) minimises, which equals the value up to an affine map (see `description`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch
from torch import Tensor

EXP_CAP = 30.0
"""Exponents above this continue linearly (same slope), so exponential losses stay finite."""

TV_EPS = 1e-8
"""Added to r inside the square root of the total-variation loss: finite gradient at r = 0."""

ALPHA_LIMIT_TOL = 1e-6
"""|alpha| or |alpha - 1| below this is treated as the KL limit."""


@dataclass(frozen=True)
class ClosedFormDivergence:
    """One f-divergence: its generator, its Gaussian closed form, and its training loss (all in r)."""

    name: str
    generator: Callable[[Tensor], Tensor]
    value: Callable[[Tensor], Tensor]
    loss: Callable[[Tensor], Tensor]
    description: str


def capped_expm1(x: Tensor, cap: float = EXP_CAP) -> Tensor:
    """expm1(x) for x <= cap; expm1(cap) + exp(cap) (x - cap) beyond (finite, monotone, C^1)."""
    below = x <= cap  # torch.where, not clamp: clamp's gradient is 0 exactly at the cap
    return torch.where(below, torch.expm1(torch.where(below, x, cap)), math.expm1(cap) + math.exp(cap) * (x - cap))


# --- generators f(u), u = p/q ---------------------------------------------------------------------


def kl_generator(u: Tensor) -> Tensor:
    """f(u) = u log u."""
    return torch.special.xlogy(u, u)


def reverse_kl_generator(u: Tensor) -> Tensor:
    """f(u) = -log u."""
    return -torch.log(u)


def jeffreys_generator(u: Tensor) -> Tensor:
    """f(u) = (u - 1) log u."""
    return (u - 1) * torch.log(u)


def hellinger_generator(u: Tensor) -> Tensor:
    """f(u) = (sqrt(u) - 1)^2."""
    return (torch.sqrt(u) - 1) ** 2


def pearson_chi2_generator(u: Tensor) -> Tensor:
    """f(u) = (u - 1)^2."""
    return (u - 1) ** 2


def total_variation_generator(u: Tensor) -> Tensor:
    """f(u) = |u - 1| / 2."""
    return (u - 1).abs() / 2


def alpha_generator(alpha: float, u: Tensor) -> Tensor:
    """f(u) = (u^a - 1) / (a (a - 1))."""
    return (u**alpha - 1) / (alpha * (alpha - 1))


# --- values D_f(P||Q) as functions of r -------------------------------------------------------------


def half(r: Tensor) -> Tensor:
    """r / 2 (KL and reverse KL)."""
    return r / 2


def identity(r: Tensor) -> Tensor:
    """r (Jeffreys; also the reference MSE loss)."""
    return r


def hellinger_value(r: Tensor) -> Tensor:
    """2 (1 - exp(-r/8))."""
    return -2 * torch.expm1(-r / 8)


def pearson_chi2_value(r: Tensor) -> Tensor:
    """exp(r) - 1."""
    return torch.expm1(r)


def total_variation_value(r: Tensor) -> Tensor:
    """erf(sqrt(r) / (2 sqrt 2))."""
    return torch.erf(torch.sqrt(r) / (2 * math.sqrt(2)))


def alpha_value(alpha: float, r: Tensor) -> Tensor:
    """(exp(a(a-1) r/2) - 1) / (a(a-1))."""
    c = alpha * (alpha - 1)
    return torch.expm1(c * r / 2) / c


# --- training losses as functions of r ---------------------------------------------------------------


def hellinger_loss(r: Tensor) -> Tensor:
    """-exp(-r/8)."""
    return -torch.exp(-r / 8)


def pearson_chi2_loss(r: Tensor) -> Tensor:
    """exp(r), continued linearly past r = EXP_CAP."""
    return capped_expm1(r) + 1


def total_variation_loss(r: Tensor) -> Tensor:
    """erf(sqrt(r + TV_EPS) / (2 sqrt 2))."""
    return total_variation_value(r + TV_EPS)


def alpha_loss(alpha: float, r: Tensor) -> Tensor:
    """(exp(a(a-1) r/2) - 1) / (a(a-1)), exponent continued linearly past EXP_CAP."""
    c = alpha * (alpha - 1)
    return capped_expm1(c * r / 2) / c


CLOSED_FORM: dict[str, ClosedFormDivergence] = {
    d.name: d
    for d in (
        ClosedFormDivergence("mse", kl_generator, half, identity, "loss = 2 * value = r (reference MSE; value is KL)"),
        ClosedFormDivergence("kl", kl_generator, half, half, "loss = value = r/2"),
        ClosedFormDivergence("reverse_kl", reverse_kl_generator, half, half, "loss = value = r/2"),
        ClosedFormDivergence("jeffreys", jeffreys_generator, identity, identity, "loss = value = r"),
        ClosedFormDivergence(
            "hellinger", hellinger_generator, hellinger_value, hellinger_loss, "loss = value/2 - 1 = -exp(-r/8)"
        ),
        ClosedFormDivergence(
            "pearson_chi2",
            pearson_chi2_generator,
            pearson_chi2_value,
            pearson_chi2_loss,
            f"loss = value + 1 = exp(r), continued linearly past r = {EXP_CAP:g}",
        ),
        ClosedFormDivergence(
            "total_variation",
            total_variation_generator,
            total_variation_value,
            total_variation_loss,
            f"loss = value at r + {TV_EPS:g} (finite gradient at r = 0)",
        ),
    )
}


def alpha_divergence(alpha: float) -> ClosedFormDivergence:
    """Amari alpha-divergence, f(u) = (u^a - 1)/(a(a-1)); a = 1/2 is 2x squared Hellinger, a = 2 is chi^2/2."""
    name = f"alpha_{alpha:g}"
    if abs(alpha - 1) < ALPHA_LIMIT_TOL:
        return replace(CLOSED_FORM["kl"], name=name, description="alpha -> 1 limit: KL, loss = value = r/2")
    if abs(alpha) < ALPHA_LIMIT_TOL:
        return replace(
            CLOSED_FORM["reverse_kl"], name=name, description="alpha -> 0 limit: reverse KL, loss = value = r/2"
        )
    return ClosedFormDivergence(
        name,
        partial(alpha_generator, alpha),
        partial(alpha_value, alpha),
        partial(alpha_loss, alpha),
        f"loss = value, exponent a(a-1)r/2 continued linearly past {EXP_CAP:g}",
    )


def get_closed_form(name: str, alpha: float | None = None) -> ClosedFormDivergence:
    """CLOSED_FORM[name], or alpha_divergence(alpha) for name "alpha" (alpha is ignored for other names)."""
    if name == "alpha":
        if alpha is None:
            raise ValueError('divergence "alpha" needs a value: call get_closed_form("alpha", alpha=...)')
        return alpha_divergence(alpha)
    if name not in CLOSED_FORM:
        raise ValueError(f"unknown divergence {name!r}; valid names: {', '.join([*CLOSED_FORM, 'alpha'])}")
    return CLOSED_FORM[name]
