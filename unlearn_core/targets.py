"""What the erased model's prediction for the target prompt is pulled towards (one registry).

Each mode lists the conditionings the frozen model is evaluated on (all in one batched forward at the
same x_t) and combines those frozen outputs into the regression target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from .denoiser import Conditioning


@dataclass(frozen=True)
class PromptBank:
    """Encoded prompts, one row per prompt pair (``uncond`` has one row per pair too)."""

    target: Conditioning
    anchor: Conditioning
    erase_from: Conditioning
    uncond: Conditioning


@dataclass(frozen=True)
class TargetMode:
    name: str
    frozen_terms: Callable[[PromptBank], list[Conditioning]]
    combine: Callable[[list[Tensor], float], Tensor]
    description: str
    stop_measure: str  # what erase_until compares: "moved" (onto the anchor) or "progress" (towards the mode's aim)
    auto_erase_until: Callable[[float], float]  # eta -> erase_until's "auto" value, in stop_measure's units


# erase_until auto: the anchor modes stop this share of eta past the anchor (moved 1 + eta / 5: 1.1 at eta 0.5, 1.2 at
# eta 1, 1.0 for the anchor mode, which has no eta), negative_guidance this share of the way to its aim. Chosen on the
# shapes demo's main job (at 1.0 it stopped at step 30 with 3 of 24 circles left, outside its 10 % bound) and the flow
# demo (its images flip at 1.2), checked on the others (benchmarks/results/contextual_issue26.md).
PAST_ANCHOR = 0.2
AIM_SHARE = 0.6


def _anchor_terms(bank: PromptBank) -> list[Conditioning]:
    return [bank.anchor]


def _anchor_combine(outputs: list[Tensor], eta: float) -> Tensor:
    """target = eps_frozen(x_t, c_anchor)."""
    return outputs[0]


def _guidance_terms(bank: PromptBank) -> list[Conditioning]:
    return [bank.erase_from, bank.target, bank.uncond]


def _guidance_combine(outputs: list[Tensor], eta: float) -> Tensor:
    """target = eps_frozen(x_t, c_from) - eta (eps_frozen(x_t, c*) - eps_frozen(x_t, empty))."""
    from_, target, uncond = outputs
    return from_ - eta * (target - uncond)


def _anchor_guidance_terms(bank: PromptBank) -> list[Conditioning]:
    return [bank.anchor, bank.target]


def _anchor_guidance_combine(outputs: list[Tensor], eta: float) -> Tensor:
    """target = eps_frozen(x_t, c_anchor) - eta (eps_frozen(x_t, c*) - eps_frozen(x_t, c_anchor))."""
    anchor, target = outputs
    return anchor - eta * (target - anchor)


TARGET_MODES: dict[str, TargetMode] = {
    "anchor": TargetMode("anchor", _anchor_terms, _anchor_combine,
                         "Concept Ablation / f-DMU: the original model's prediction for the anchor prompt", "moved",
                         lambda eta: 1.0),
    "negative_guidance": TargetMode("negative_guidance", _guidance_terms, _guidance_combine,
                                    "ESD: the original prediction steered away from the target by eta", "progress",
                                    lambda eta: AIM_SHARE),
    "anchor_guidance": TargetMode("anchor_guidance", _anchor_guidance_terms, _anchor_guidance_combine,
                                  "the anchor's prediction steered away from the target by eta: becomes the anchor "
                                  "minus what makes the target differ from it (a red circle -> a red non-circle)",
                                  "moved", lambda eta: 1 + PAST_ANCHOR * eta),
}
