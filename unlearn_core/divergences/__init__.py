"""f-divergences for concept erasure: Gaussian closed forms, the losses built on them, and the variational bound."""

from .closed_form import CLOSED_FORM, ClosedFormDivergence, alpha_divergence, get_closed_form
from .losses import erasure_loss, kl_timestep_weight, squared_error
from .variational import (
    VARIATIONAL,
    Critic,
    VariationalDivergence,
    critic_loss,
    generator_loss,
    variational_bound,
)

__all__ = [
    "CLOSED_FORM",
    "VARIATIONAL",
    "ClosedFormDivergence",
    "Critic",
    "VariationalDivergence",
    "alpha_divergence",
    "critic_loss",
    "erasure_loss",
    "generator_loss",
    "get_closed_form",
    "kl_timestep_weight",
    "squared_error",
    "variational_bound",
]
