"""Closed forms against numerical integration of their generators, and the losses built on them."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from unlearn_core.divergences import (
    CLOSED_FORM,
    alpha_divergence,
    erasure_loss,
    get_closed_form,
    kl_timestep_weight,
    squared_error,
)

R_VALUES = [0.01, 0.3, 1.0, 3.0, 8.0]
ALPHAS = [0.25, 0.5, 0.75, 1.5, 2.0, -0.5]
ALL_DIVERGENCES = [*CLOSED_FORM.values(), *(alpha_divergence(a) for a in ALPHAS)]


def quad_divergence(generator, r: float, s: float = 1.3) -> float:
    """Integral of q(x) f(p(x)/q(x)) dx for P = N(m, s^2), Q = N(0, s^2) with m^2/s^2 = r."""
    m = math.sqrt(r) * s

    def integrand(x: float) -> float:
        log_q = -0.5 * (x / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
        log_u = (m * x - m * m / 2) / s**2  # log p(x) - log q(x)
        return math.exp(log_q) * generator(torch.tensor(math.exp(log_u), dtype=torch.float64)).item()

    # Mass sits around 0, m and their reflections (2m for chi^2); TV has a kink at u = 1 (x = m/2).
    lo, hi = -2 * m - 12 * s, 3 * m + 12 * s
    value, _ = integrate.quad(integrand, lo, hi, points=[0.0, m / 2, m, 2 * m], limit=200, epsabs=1e-12, epsrel=1e-9)
    return value


def values(div, r) -> torch.Tensor:
    return div.value(torch.as_tensor(r, dtype=torch.float64))


# --- closed forms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("div", ALL_DIVERGENCES, ids=lambda d: d.name)
def test_closed_form_matches_1d_integral(div):
    expected = [quad_divergence(div.generator, r) for r in R_VALUES]
    np.testing.assert_allclose(values(div, R_VALUES).numpy(), expected, rtol=1e-6, atol=1e-10)


def test_mse_value_is_kl():
    r = torch.tensor(R_VALUES, dtype=torch.float64)
    torch.testing.assert_close(CLOSED_FORM["mse"].value(r), r / 2)
    torch.testing.assert_close(CLOSED_FORM["mse"].loss(r), r)


@pytest.mark.parametrize("div", ALL_DIVERGENCES, ids=lambda d: d.name)
def test_closed_form_matches_3d_monte_carlo(div):
    """d = 3, mean difference spread over all dims: only r = ||dmu||^2/s^2 matters."""
    gen = torch.Generator().manual_seed(0)
    s, n = 0.7, 400_000
    dmu = torch.tensor([0.2, -0.5, 0.3], dtype=torch.float64)
    dmu = dmu / dmu.norm() * math.sqrt(0.5) * s  # r = 0.5
    r = (dmu.norm() / s) ** 2
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64) * s + 1.0  # x ~ Q = N(1, s^2 I)
    mu_p = 1.0 + dmu
    log_u = (-((x - mu_p) ** 2).sum(1) + ((x - 1.0) ** 2).sum(1)) / (2 * s**2)
    u = torch.exp(log_u)
    # E_Q[u - 1] = 0, so subtracting f'(1) (u - 1) keeps the mean and removes most of the variance
    one = torch.ones((), dtype=torch.float64, requires_grad=True)
    (slope_at_1,) = torch.autograd.grad(div.generator(one), one)
    samples = div.generator(u) - slope_at_1 * (u - 1)
    estimate, stderr = samples.mean(), samples.std() / math.sqrt(n)
    expected = div.value(r)
    assert stderr < 0.01 * expected
    assert abs(estimate - expected) < 4 * stderr


# --- the alpha family ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1 - 1e-4, 1 + 1e-4, -1e-4, 1e-4, 1.0, 0.0, 1 + 5e-7, 5e-7])
def test_alpha_limits_recover_kl(alpha):
    r = torch.tensor([0.01, 0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(alpha_divergence(alpha).value(r), r / 2, rtol=1e-4, atol=0)
    torch.testing.assert_close(alpha_divergence(alpha).loss(r), r / 2, rtol=1e-4, atol=0)


def test_alpha_limit_generators():
    u = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(alpha_divergence(1.0).generator(u), u * torch.log(u))
    torch.testing.assert_close(alpha_divergence(0.0).generator(u), -torch.log(u))


def test_alpha_is_continuous_across_limit_threshold():
    r = torch.tensor([0.5, 4.0])
    for centre in (0.0, 1.0):
        inside, outside = alpha_divergence(centre + 0.9e-6), alpha_divergence(centre + 1.1e-6)
        torch.testing.assert_close(inside.value(r), outside.value(r), rtol=1e-5, atol=0)


def test_alpha_special_cases():
    r = torch.tensor(R_VALUES, dtype=torch.float64)
    torch.testing.assert_close(alpha_divergence(0.5).value(r), 2 * CLOSED_FORM["hellinger"].value(r))
    torch.testing.assert_close(alpha_divergence(2.0).value(r), CLOSED_FORM["pearson_chi2"].value(r) / 2)
    torch.testing.assert_close(alpha_divergence(-1.0).value(r), CLOSED_FORM["pearson_chi2"].value(r) / 2)
    assert alpha_divergence(0.5).name == "alpha_0.5"


# --- losses as functions of r ---------------------------------------------------------------------------


def loss_grad(div, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = r.clone().requires_grad_(True)
    loss = div.loss(r)
    (grad,) = torch.autograd.grad(loss.sum(), r)
    return loss.detach(), grad


@pytest.mark.parametrize("div", [*ALL_DIVERGENCES, alpha_divergence(3.0)], ids=lambda d: d.name)
def test_loss_is_increasing_finite_and_affine_in_value(div):
    r = torch.cat([torch.linspace(0, 60, 601), torch.tensor([1e3, 1e4])]).double()
    loss, grad = loss_grad(div, r)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert (loss[:601].diff() > 0).all() and (grad[1:601] > 0).all()  # bounded losses saturate further out
    assert (loss.diff() >= 0).all() and (grad >= 0).all()
    # below any overflow cap the loss is an affine function of the value (see each `description`)
    small = r[(r > 0.05) & (r < 5)]
    loss_s, value_s = div.loss(small), div.value(small)
    slope = (loss_s[-1] - loss_s[0]) / (value_s[-1] - value_s[0])
    offset = loss_s - slope * value_s
    torch.testing.assert_close(offset, offset[:1].expand_as(offset), atol=1e-6, rtol=0)


def test_reference_loss_formulas():
    r = torch.tensor([0.0, 0.5, 2.0, 7.0], dtype=torch.float64)
    torch.testing.assert_close(CLOSED_FORM["mse"].loss(r), r)
    torch.testing.assert_close(CLOSED_FORM["kl"].loss(r), r / 2)
    torch.testing.assert_close(CLOSED_FORM["reverse_kl"].loss(r), r / 2)
    torch.testing.assert_close(CLOSED_FORM["jeffreys"].loss(r), r)
    torch.testing.assert_close(CLOSED_FORM["hellinger"].loss(r), -torch.exp(-r / 8))
    torch.testing.assert_close(CLOSED_FORM["pearson_chi2"].loss(r), torch.exp(r))
    torch.testing.assert_close(CLOSED_FORM["total_variation"].loss(r[1:]), CLOSED_FORM["total_variation"].value(r[1:]))


def test_gradient_ordering_hellinger_mse_pearson():
    S = torch.linspace(1e-3, 5, 200, dtype=torch.float64)
    _, g_h = loss_grad(CLOSED_FORM["hellinger"], S)
    _, g_m = loss_grad(CLOSED_FORM["mse"], S)
    _, g_p = loss_grad(CLOSED_FORM["pearson_chi2"], S)
    assert (g_h < g_m).all() and (g_m < g_p).all()
    torch.testing.assert_close(g_h, torch.exp(-S / 8) / 8)
    torch.testing.assert_close(g_p, torch.exp(S))


def test_hellinger_gradient_is_bounded():
    S = torch.cat([torch.linspace(0, 100, 1001), torch.tensor([1e4, 1e8])]).double()
    _, grad = loss_grad(CLOSED_FORM["hellinger"], S)
    assert grad.max() <= 1 / 8 + 1e-12 and (grad >= 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pearson_loss_finite_far_past_cap(dtype):
    r = torch.tensor([29.9, 30.0, 30.1, 1e4], dtype=dtype)
    loss, grad = loss_grad(CLOSED_FORM["pearson_chi2"], r)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(grad[1:], torch.full_like(grad[1:], math.exp(30.0)))  # C^1 at the cap
    assert (loss.diff() > 0).all()


def test_total_variation_gradient_finite_at_zero():
    _, grad = loss_grad(CLOSED_FORM["total_variation"], torch.zeros(3))
    assert torch.isfinite(grad).all()


# --- names --------------------------------------------------------------------------------------------


def test_get_closed_form():
    assert get_closed_form("hellinger") is CLOSED_FORM["hellinger"]
    assert get_closed_form("alpha", alpha=0.5).name == "alpha_0.5"
    assert set(CLOSED_FORM) == {"mse", "kl", "reverse_kl", "jeffreys", "hellinger", "pearson_chi2", "total_variation"}
    assert all(name == div.name for name, div in CLOSED_FORM.items())


def test_get_closed_form_alpha_without_value():
    with pytest.raises(ValueError, match=r"alpha="):
        get_closed_form("alpha")


def test_get_closed_form_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_closed_form("wasserstein")
    assert all(name in str(info.value) for name in [*CLOSED_FORM, "alpha"])


# --- losses.py ----------------------------------------------------------------------------------------


def test_squared_error_hand_computed():
    target = torch.zeros(2, 4, 3, 5)
    pred = torch.zeros(2, 4, 3, 5)
    pred[0] = 1.0  # every channel off by 1 everywhere: S = 4 (channels summed, pixels averaged)
    pred[1, 2, 1, 3] = 3.0  # one element off by 3: S = 9 / 15
    pred[1, 0, 0, 0] = -1.0  # and one off by 1: S += 1 / 15
    torch.testing.assert_close(squared_error(pred, target), torch.tensor([4.0, 10 / 15]))


def test_erasure_loss_sigma_and_weight():
    S = torch.tensor([1.0, 2.0, 8.0])
    weight = torch.tensor([1.0, 4.0, 0.5])
    hellinger = CLOSED_FORM["hellinger"]
    r = weight * S / 2.0**2
    torch.testing.assert_close(erasure_loss(S, hellinger, sigma=2.0, weight=weight), (-torch.exp(-r / 8)).mean())
    torch.testing.assert_close(erasure_loss(S, CLOSED_FORM["mse"], sigma=0.5), (S / 0.25).mean())
    torch.testing.assert_close(erasure_loss(S, CLOSED_FORM["mse"]), S.mean())


def sd_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def test_kl_timestep_weight_on_sd_schedule():
    abar = sd_alphas_cumprod()
    for dtype in (torch.float32, torch.float64):
        lam = kl_timestep_weight(abar.to(dtype))
        assert lam.shape == (1000,) and lam.dtype == dtype
        assert torch.isfinite(lam).all() and (lam > 0).all()
        assert abs(lam.double().mean().item() - 1) < 1e-5


def test_kl_timestep_weight_is_the_posterior_mean_ratio():
    """||dmu||^2 / (beta_t ||d eps||^2) from the DDPM posterior mean, up to the mean-1 normalisation."""
    abar = sd_alphas_cumprod()
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    alphas = 1 - betas
    gen = torch.Generator().manual_seed(0)
    x_t, eps_a, eps_b = torch.randn(3, 1000, 16, generator=gen, dtype=torch.float64)

    def mu(eps):
        return (x_t - (betas / (1 - abar).sqrt())[:, None] * eps) / alphas.sqrt()[:, None]

    ratio = ((mu(eps_a) - mu(eps_b)) ** 2).sum(1) / (betas * ((eps_a - eps_b) ** 2).sum(1))
    torch.testing.assert_close(kl_timestep_weight(abar), ratio / ratio.mean())
