"""What a long run (an erasure, an attack) reports to its callback at each step: a progress bar's and a
console line's worth."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class StepInfo:
    phase: str  # erasure: "sampling", "critic_warmup", "training"; attack: "attack_images", "attack"
    step: int  # 1-based within the phase
    total: int
    loss: float = math.nan
    mean_s: float = math.nan  # mean S of the erasure terms (before sigma)
    keep_s: float = math.nan  # mean S of the preservation terms
    grad_norm: float = math.nan
    sigma: float = math.nan  # the closed forms' sigma (calibrated when the setting is 0 = auto)
    moved: float = math.nan  # on check steps: the least any target moved onto its anchor (report.Probes)
    progress: float = math.nan  # on check steps: the least progress of any target towards its mode's aim
    erased: float = math.nan  # on check steps: what erase_until compares (moved or progress, per target mode)
    drift: float = math.nan  # on check steps: the largest keep drift

    @property
    def ratio(self) -> float:
        """r = S / sigma^2: about 1 or more where the closed forms' shapes differ."""
        return self.mean_s / self.sigma**2

    def check_text(self) -> str:
        """What a check step measured, in words (the node's console and the CLI print it)."""
        return (f"check at step {self.step}: every target moved at least {self.moved:.0%} onto its anchor "
                f"({self.progress:.0%} of the way to the mode's aim); largest keep drift {self.drift:.0%}")
