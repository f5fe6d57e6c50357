"""Measure an erasure in prediction space, on fixed probes the erasure never trained on (no classifier).

The probes are the original model's own samples of each pair's anchor prompt (fresh seeds), noised at
timesteps spread over the middle of the schedule, where the prompt decides what the image shows. For
each prompt pair, with c = the target's and a = the anchor's prediction of the original model and
e = the erased model's prediction for the target, on the same probes:

    moved = <e - c, a - c> / |a - c|^2     0: unchanged; 1 (100 %): predicts like the anchor;
                                           above 1: past it (anchor_guidance aims at 1 + eta)

and, when the target mode is given, how far the erased prediction went towards what that mode trains it
on (g = the mode's frozen target on the same probes: the anchor's prediction for ``anchor``, a + eta (a - c)
for ``anchor_guidance``, the negatively guided prediction for ``negative_guidance``):

    progress = <e - c, g - c> / |g - c|^2   1 (100 %): the mode's own aim reached; = moved for ``anchor``,
                                           moved / (1 + eta) for ``anchor_guidance``

and for each keep prompt ``drift = S(erased(keep), original(keep)) / S(original(keep), original(target))``:
the change of a kept prompt, relative to how different that prompt is from the erased target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .concepts import ConceptSet
from .denoiser import Conditioning, Denoiser, cat_cond, index_cond
from .divergences import squared_error
from .erasure import Erasure
from .injection import DeltaInjection
from .samples import build_pool
from .schedule import add_noise
from .targets import TARGET_MODES, PromptBank

Predict = Callable[[bool, Tensor, Tensor, Conditioning], Tensor]
"""(original?, x_t, t, conditioning) -> the network output, of the original model or of the erased one."""

PROBE_WINDOW = (0.25, 0.75)  # probe timesteps, as fractions of the schedule
PROBE_SAMPLE_STEPS = 10
PROBE_GUIDANCE = 6.0


@dataclass
class ErasureReport:
    pairs: list[dict] = field(default_factory=list)  # {target, anchor, before, after, moved[, progress]}
    keep: list[dict] = field(default_factory=list)  # {prompt, drift, absolute}

    def text(self) -> str:
        lines = ["Erasure report (prediction space; moved 100% = the target now predicts like its anchor; "
                 "anchor_guidance aims past it)"]
        for p in self.pairs:
            aim = f", {100 * p['progress']:.1f}% of the way to its target mode's aim" if "progress" in p else ""
            lines.append(f"  {p['target']!r} -> {p['anchor']!r}: moved {100 * p['moved']:.1f}%{aim} "
                         f"(S to the anchor {p['before']:.3g} -> {p['after']:.3g})")
        for k in self.keep:
            lines.append(f"  keep {k['prompt']!r}: drift {100 * k['drift']:.1f}% (S {k['absolute']:.3g})")
        return "\n".join(lines)


class Probes:
    """Fixed probes (see the module docstring) with the original model's predictions on them.

    Build it while ``denoiser`` computes the original model (its samples are the probes; with ``of_targets``
    its samples of the target prompts instead of the anchors: the images an attack brings back). With
    ``target_mode`` (and its ``eta`` and ``erase_from``) it also measures each pair's progress towards
    that mode's aim (module docstring).
    """

    def __init__(self, denoiser: Denoiser, predict: Predict, pairs: list[tuple[str, str]], keep: list[str],
                 conds: dict[str, Conditioning], per_pair: int, resolution: int, generator: torch.Generator,
                 target_mode: str | None = None, eta: float = 1.0, erase_from: str = "", of_targets: bool = False):
        self.pairs, self.keep, self.conds = pairs, keep, conds
        drawn = cat_cond([conds[t if of_targets else a] for t, a in pairs])  # of_targets: where an attack restores
        side = resolution // denoiser.latent_downscale
        pool = build_pool("anchor_samples", denoiser, drawn, conds[""], per_pair * len(pairs),
                          (denoiser.latent_channels, side, side), PROBE_SAMPLE_STEPS, PROBE_GUIDANCE, generator)
        num_t = denoiser.alphas_cumprod.shape[0]
        lo, hi = (round(f * (num_t - 1)) for f in PROBE_WINDOW)
        self.t = torch.linspace(lo, hi, per_pair).round().long().repeat_interleave(len(pairs))
        noise = torch.randn(pool.x0.shape, generator=generator)
        self.x_t = add_noise(pool.x0, noise, denoiser.alphas_cumprod[self.t])
        self.pair = pool.pair_index
        self.target = self._run(predict, True, [t for t, _ in pairs])
        self.anchor = self._run(predict, True, [a for _, a in pairs])
        self.keep_original = {k: predict(True, self.x_t, self.t, self._rows(k)) for k in keep}
        self.aim = None if target_mode is None else self._aim(denoiser, predict, target_mode, eta, erase_from,
                                                              resolution)

    def _aim(self, denoiser: Denoiser, predict: Predict, target_mode: str, eta: float, erase_from: str,
             resolution: int) -> Tensor:
        """The original model's training target of ``target_mode`` on each probe (what the erasure pulls towards)."""
        mode = TARGET_MODES[target_mode]
        rows = [self.conds[p] if p in self.conds else denoiser.encode_prompts([p], (resolution,) * 2)
                for p in [erase_from or t for t, _ in self.pairs]]
        bank = PromptBank(target=cat_cond([self.conds[t] for t, _ in self.pairs]),
                          anchor=cat_cond([self.conds[a] for _, a in self.pairs]), erase_from=cat_cond(rows),
                          uncond=cat_cond([self.conds[""]] * len(self.pairs)))
        terms = [predict(True, self.x_t, self.t, index_cond(c, self.pair)) for c in mode.frozen_terms(bank)]
        return mode.combine(terms, eta)

    def _rows(self, prompt: str) -> Conditioning:
        return index_cond(self.conds[prompt], torch.zeros(len(self.t), dtype=torch.long))

    def _run(self, predict: Predict, original: bool, prompts: list[str]) -> Tensor:
        """Each probe's prediction for its own pair's prompt from ``prompts`` (one per pair)."""
        return self._ask(predict, original, cat_cond([self.conds[p] for p in prompts]))

    def _ask(self, predict: Predict, original: bool, conds: Conditioning) -> Tensor:
        """Each probe's prediction for its own pair's row of ``conds`` (one row per pair)."""
        return predict(original, self.x_t, self.t, index_cond(conds, self.pair))

    def measure(self, predict: Predict, asked: Conditioning | None = None) -> ErasureReport:
        """The report of the erased model that ``predict(False, ...)`` evaluates; with ``asked`` (one row per
        pair: an attack's conditioning) the erased model is asked with those rows instead of the target prompts."""
        erased = (self._run(predict, False, [t for t, _ in self.pairs]) if asked is None
                  else self._ask(predict, False, asked))
        report = ErasureReport()
        for i, (target, anchor) in enumerate(self.pairs):
            rows = self.pair == i
            c, a, e = self.target[rows], self.anchor[rows], erased[rows]
            report.pairs.append(dict(target=target, anchor=anchor, before=squared_error(c, a).mean().item(),
                                     after=squared_error(e, a).mean().item(), moved=_projection(c, a, e)))
            if self.aim is not None:
                report.pairs[-1]["progress"] = _projection(c, self.aim[rows], e)
        for prompt in self.keep:
            orig = self.keep_original[prompt]
            absolute = squared_error(predict(False, self.x_t, self.t, self._rows(prompt)), orig).mean().item()
            scale = squared_error(orig, self.target).mean().item()
            report.keep.append(dict(prompt=prompt, absolute=absolute, drift=absolute / scale if scale > 0 else 0.0))
        return report


def _projection(start: Tensor, aim: Tensor, now: Tensor) -> float:
    """<now - start, aim - start> / |aim - start|^2: 0 at the start, 1 at the aim (0 when they coincide)."""
    span = (aim - start).square().sum()
    return ((now - start) * (aim - start)).sum().item() / span.item() if span > 0 else 0.0


def encode_all(denoiser: Denoiser, concepts: ConceptSet, resolution: int) -> dict[str, Conditioning]:
    """One-row conditionings of every prompt of ``concepts``, and of the empty prompt."""
    prompts = sorted({p for pair in concepts.prompt_pairs() for p in pair} | set(concepts.keep) | {""})
    return dict(zip(prompts, (denoiser.encode_prompts([p], (resolution,) * 2) for p in prompts)))


@torch.no_grad()
def measure(denoiser: Denoiser, erasure: Erasure, concepts: ConceptSet, resolution: int = 512,
            probes: int = 4, seed: int = 0, strength: float = 1.0) -> ErasureReport:
    """Prediction-space efficacy and preservation of ``erasure`` on ``denoiser`` (see module docstring); the
    progress towards the aim of the target mode the erasure was trained with, where its metadata names one."""
    config = erasure.metadata.config
    injection = DeltaInjection(denoiser.net, erasure.names, lambda n: strength * erasure.delta(n),
                               fp8_compute=denoiser.dtype)

    def predict(original: bool, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        x_t, t = x_t.to(denoiser.device, denoiser.dtype), t.to(denoiser.device)
        if original:
            with injection.frozen():
                return denoiser(x_t, t, cond).float().cpu()
        return denoiser(x_t, t, cond).float().cpu()

    probe_set = Probes(denoiser, predict, concepts.prompt_pairs(), list(concepts.keep),
                       encode_all(denoiser, concepts, resolution), probes, resolution,
                       torch.Generator().manual_seed(seed),  # built on the original network: no deltas yet
                       target_mode=config.target_mode if config else None,  # no aim known: "moved" only
                       eta=config.guidance_eta if config else 1.0, erase_from=config.erase_from if config else "")
    with injection:
        return probe_set.measure(predict)
