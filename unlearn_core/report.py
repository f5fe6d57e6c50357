"""Measure an erasure in prediction space, on fixed noisy latents (no sampling, no classifier).

For each prompt pair and each probe (x_t, t):

    before = S(original(target), original(anchor))     how far the target starts from the anchor
    after  = S(erased(target),   original(anchor))     how far it is after the erasure
    moved  = 1 - after / before                          1: target now predicts the anchor; 0: unchanged

and for each keep prompt ``drift = S(erased(keep), original(keep)) / S(original(keep), original(target))``:
the change of a kept prompt, relative to how different that prompt is from the erased target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .concepts import ConceptSet
from .denoiser import Denoiser
from .divergences import squared_error
from .erasure import Erasure
from .injection import DeltaInjection
from .schedule import add_noise


@dataclass
class ErasureReport:
    pairs: list[dict] = field(default_factory=list)  # {target, anchor, before, after, moved}
    keep: list[dict] = field(default_factory=list)  # {prompt, drift, absolute}

    def text(self) -> str:
        lines = ["Erasure report (prediction space; moved 100% = target now predicts like the anchor)"]
        for p in self.pairs:
            lines.append(f"  {p['target']!r} -> {p['anchor']!r}: moved {100 * p['moved']:.1f}% "
                         f"(S {p['before']:.3g} -> {p['after']:.3g})")
        for k in self.keep:
            lines.append(f"  keep {k['prompt']!r}: drift {100 * k['drift']:.1f}% (S {k['absolute']:.3g})")
        return "\n".join(lines)


@torch.no_grad()
def measure(denoiser: Denoiser, erasure: Erasure, concepts: ConceptSet, resolution: int = 512,
            probes: int = 4, seed: int = 0, strength: float = 1.0) -> ErasureReport:
    """Prediction-space efficacy and preservation of ``erasure`` on ``denoiser`` (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    side = resolution // 8
    x0 = torch.randn(probes, denoiser.latent_channels, side, side, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.linspace(100, denoiser.alphas_cumprod.shape[0] - 100, probes).long()
    x_t = add_noise(x0, noise, denoiser.alphas_cumprod[t]).to(denoiser.device, denoiser.dtype)
    t = t.to(denoiser.device)
    pairs = concepts.prompt_pairs()
    prompts = {p for pair in pairs for p in pair} | set(concepts.keep)
    conds = {p: {k: v.expand(probes, *v.shape[1:]) for k, v in denoiser.encode_prompts([p], (resolution,) * 2).items()}
             for p in prompts}
    injection = DeltaInjection(denoiser.net, erasure.names, lambda n: strength * erasure.delta(n))

    def original(prompt: str) -> Tensor:
        with injection.frozen():
            return denoiser(x_t, t, conds[prompt]).float()

    def erased(prompt: str) -> Tensor:
        return denoiser(x_t, t, conds[prompt]).float()

    report = ErasureReport()
    with injection:
        for target, anchor in pairs:
            orig_anchor = original(anchor)
            before = squared_error(original(target), orig_anchor).mean().item()
            after = squared_error(erased(target), orig_anchor).mean().item()
            report.pairs.append(dict(target=target, anchor=anchor, before=before, after=after,
                                     moved=1 - after / before if before > 0 else 0.0))
        first_target = original(pairs[0][0])
        for prompt in concepts.keep:
            orig = original(prompt)
            absolute = squared_error(erased(prompt), orig).mean().item()
            scale = squared_error(orig, first_target).mean().item()
            report.keep.append(dict(prompt=prompt, absolute=absolute, drift=absolute / scale if scale > 0 else 0.0))
    return report
