"""The variational (f-GAN) bound: tight at the optimal critic, reachable by training, and the conv Critic."""

import math

import pytest
import torch
from scipy import integrate
from torch import nn

from unlearn_core.divergences import (
    CLOSED_FORM,
    VARIATIONAL,
    Critic,
    critic_loss,
    generator_loss,
    variational_bound,
)


def js_generator(u: torch.Tensor) -> torch.Tensor:
    """f(u) = u log u - (u + 1) log((u + 1)/2): the f-GAN Jensen-Shannon (= 2 JSD)."""
    return torch.special.xlogy(u, u) - (u + 1) * torch.log((u + 1) / 2)


GENERATORS = {name: CLOSED_FORM[name].generator for name in VARIATIONAL if name in CLOSED_FORM}
GENERATORS["jensen_shannon"] = js_generator

# Optimal logit v* with g_f(v*) = T* = f'(u), as a function of u = p/q (TV: T* = sign(u - 1)/2, reached as v -> inf).
OPTIMAL_LOGIT = {
    "kl": lambda u: 1 + torch.log(u),
    "reverse_kl": lambda u: torch.log(u),
    "hellinger": lambda u: torch.log(u) / 2,
    "jensen_shannon": lambda u: torch.log(u),
    "pearson_chi2": lambda u: 2 * (u - 1),
    "total_variation": lambda u: 20 * torch.sign(torch.log(u)),
}


def gaussian_pair(r: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Samples of P = N(m, 1) and Q = N(0, 1) with m^2 = r, and m."""
    gen = torch.Generator().manual_seed(seed)
    m = math.sqrt(r)
    x_p = torch.randn(n, generator=gen, dtype=torch.float64) + m
    x_q = torch.randn(n, generator=gen, dtype=torch.float64)
    return x_p, x_q, m


def likelihood_ratio(x: torch.Tensor, m: float) -> torch.Tensor:
    """p(x)/q(x) for P = N(m, 1), Q = N(0, 1)."""
    return torch.exp(m * x - m * m / 2)


def true_divergence(name: str, r: float) -> float:
    """Closed form where we have one, else quad integration of E_Q[f(p/q)]."""
    if name in CLOSED_FORM:
        return CLOSED_FORM[name].value(torch.tensor(r, dtype=torch.float64)).item()
    m, f = math.sqrt(r), GENERATORS[name]

    def integrand(x: float) -> float:
        u = torch.tensor(math.exp(m * x - m * m / 2), dtype=torch.float64)
        return math.exp(-x * x / 2) / math.sqrt(2 * math.pi) * f(u).item()

    return integrate.quad(integrand, -12 - m, 12 + 2 * m, points=[0.0, m], limit=200)[0]


def test_registry_names():
    assert set(VARIATIONAL) == {"kl", "reverse_kl", "hellinger", "jensen_shannon", "pearson_chi2", "total_variation"}
    assert all(name == div.name for name, div in VARIATIONAL.items())


@pytest.mark.parametrize("name", VARIATIONAL)
def test_optimal_logit_gives_f_prime(name):
    """g_f(v*(u)) = f'(u): the table of optimal logits is consistent with the generator."""
    u = torch.tensor([0.2, 0.7, 1.5, 4.0], dtype=torch.float64, requires_grad=True)
    (f_prime,) = torch.autograd.grad(GENERATORS[name](u).sum(), u)
    torch.testing.assert_close(VARIATIONAL[name].activation(OPTIMAL_LOGIT[name](u.detach())), f_prime)


@pytest.mark.parametrize("name", VARIATIONAL)
def test_fused_conjugate_matches_composition(name):
    div = VARIATIONAL[name]
    v = torch.linspace(-3, 3, 61, dtype=torch.float64)
    torch.testing.assert_close(div.fused_conjugate(v), div.conjugate(div.activation(v)), rtol=1e-3, atol=1e-4)
    assert torch.isfinite(div.fused_conjugate(torch.linspace(-50, 50, 101))).all()


@pytest.mark.parametrize("name", VARIATIONAL)
def test_bound_is_tight_at_optimal_critic(name):
    div, r, n = VARIATIONAL[name], 1.0, 1_000_000
    x_p, x_q, m = gaussian_pair(r, n, seed=1)
    v_p = OPTIMAL_LOGIT[name](likelihood_ratio(x_p, m))
    v_q = OPTIMAL_LOGIT[name](likelihood_ratio(x_q, m))
    estimate = variational_bound(div, v_p, v_q)
    stderr = math.sqrt((div.activation(v_p).var() + div.fused_conjugate(v_q).var()) / n)
    expected = true_divergence(name, r)
    assert stderr < 0.02 * expected
    assert abs(estimate.item() - expected) < 4 * stderr


def test_js_reference_value():
    """Sanity check of the quad reference: 2 JSD <= 2 log 2, and -> 2 log 2 as the Gaussians separate."""
    assert 0 < true_divergence("jensen_shannon", 1.0) < true_divergence("jensen_shannon", 9.0) < 2 * math.log(2)
    assert true_divergence("jensen_shannon", 100.0) == pytest.approx(2 * math.log(2), rel=1e-3)


def test_losses_are_the_bound_split():
    div = VARIATIONAL["hellinger"]
    gen = torch.Generator().manual_seed(0)
    v_p, v_q = torch.randn(2, 3, 1, 4, 4, generator=gen)
    torch.testing.assert_close(critic_loss(div, v_p, v_q), -variational_bound(div, v_p, v_q))
    torch.testing.assert_close(variational_bound(div, v_p, v_q), div.activation(v_p).mean() + generator_loss(div, v_q))
    torch.testing.assert_close(generator_loss(div, v_q), -torch.expm1(v_q).mean())


@pytest.mark.parametrize("name", ["kl", "hellinger"])
def test_trained_critic_reaches_closed_form(name):
    torch.manual_seed(0)
    div, r = VARIATIONAL[name], 2.0
    critic = nn.Sequential(nn.Linear(1, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    for step in range(300):
        x_p, x_q, _ = gaussian_pair(r, 512, seed=step)
        loss = critic_loss(div, critic(x_p[:, None].float()), critic(x_q[:, None].float()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x_p, x_q, _ = gaussian_pair(r, 200_000, seed=10_000)
    with torch.no_grad():
        estimate = variational_bound(div, critic(x_p[:, None].float()), critic(x_q[:, None].float())).item()
    assert estimate == pytest.approx(CLOSED_FORM[name].value(torch.tensor(r)).item(), rel=0.05)


# --- the conv critic ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def critic() -> Critic:
    torch.manual_seed(0)
    return Critic(channels=4, width=16)


@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (1, 4, 64, 64), (1, 4, 8, 8), (1, 4, 128, 96)])
def test_critic_output_shape(critic, shape):
    b, _, h, w = shape
    out = critic(torch.randn(shape), torch.full((b,), 10))
    assert out.shape == (b, 1, h // 8, w // 8)


@pytest.mark.parametrize("shape", [(2, 4, 4, 4), (1, 4, 5, 7), (1, 4, 6, 20)])
def test_critic_takes_latents_under_8x8_as_padded_to_8(critic, shape):
    b, _, h, w = shape
    x = torch.randn(shape, requires_grad=True)
    out = critic(x, torch.full((b,), 10))
    assert out.shape == (b, 1, max(h, 8) // 8, max(w, 8) // 8)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_critic_default_width_shape():
    assert Critic()(torch.randn(2, 4, 16, 16), torch.tensor([1, 2])).shape == (2, 1, 2, 2)


def test_critic_loss_reaches_every_parameter(critic):
    critic.train()
    critic.zero_grad()
    t = torch.tensor([5, 700])
    p, q = torch.randn(2, 2, 4, 16, 16)
    critic_loss(VARIATIONAL["kl"], critic(p, t), critic(q, t)).backward()
    for name, param in critic.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_generator_loss_reaches_the_model_output(critic):
    critic.eval()
    q = torch.randn(2, 4, 16, 16, requires_grad=True)
    generator_loss(VARIATIONAL["hellinger"], critic(q, torch.tensor([5, 700]))).backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_critic_sees_the_timestep(critic):
    critic.eval()
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        early, late = critic(x, torch.tensor([0, 0])), critic(x, torch.tensor([999, 999]))
        torch.testing.assert_close(critic(x, torch.tensor(0)), early)  # a scalar timestep broadcasts
    assert (early - late).abs().max() > 1e-4
