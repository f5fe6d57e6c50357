"""Robustness benchmark on the demo domains: do the attacks of unlearn_core.attacks bring an erased concept back?

    python benchmarks/robustness.py --out benchmarks/results/robustness    # every domain, ~30 min on 2 CPU cores
    python benchmarks/robustness.py --domains shapes --quick --out out/rob  # one domain, a fraction of the work

For each domain and concept, each erase mode (plain: the engine's defaults; adversarial: erase_mode adversarial with
parameter_set non_cross_attn) erases the concept, then each attack runs on the erased model:
- textual_inversion: one learnt word from the anchor's word, 300 steps, seed 0 (the attack the erasure is judged on);
- held-out textual_inversion: another seed, another initial word (a kept prompt's), 600 steps;
- soft_prompt: an offset on every conditioning row, 300 steps;
and, as a control, textual inversion on the original model. Images are read by the domain's classifier:
the % of images of the target prompts showing the concept (original model, erased model, erased model asked with
the attack's conditioning), with the erasure's own efficacy, in-domain preservation and KID on the kept prompts
(benchmarks/erasure_quality.py's Probe, 8 seeds) and the probe's prediction-space "restored" (worst target).
Writes ``results.json`` and ``table.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from erasure_quality import Probe
from unlearn_core.attacks import AttackConfig, probe
from unlearn_core.concepts import parse_concept_text
from unlearn_core.denoiser import index_cond
from unlearn_core.erasure import Erasure
from unlearn_core.injection import DeltaInjection
from unlearn_core.schedule import ddim_sample
from unlearn_core.trainer import EraseConfig, erase
from unlearn_demo.domains import DOMAINS

CONCEPTS = {"shapes": "circle", "patterns": "dots", "contextual": "dots", "clip_shapes": "circle", "flow": "circle"}
MODES = {"plain": {}, "adversarial": {"erase_mode": "adversarial", "parameter_set": "non_cross_attn"}}
IMAGES = 32  # attacked images read per attack (rounded up to whole seeds of the target prompts)


def target_rate(domain, model, denoiser, erasure: Erasure | None, conds, concept: str) -> float:
    """% of images sampled from ``conds`` (seeds 2000+) that the classifier reads as ``concept``."""
    n = next(iter(conds.values())).shape[0]
    rows = torch.arange(n).repeat(math.ceil(IMAGES / n))
    size = (domain.resolution,) * 2
    blank = index_cond(denoiser.encode_prompts([""], size), torch.zeros(len(rows), dtype=torch.long))
    side = domain.resolution // denoiser.latent_downscale
    injection = DeltaInjection(denoiser.net, erasure.names, erasure.delta) if erasure is not None else None
    with torch.no_grad(), injection if injection is not None else contextlib.nullcontext():
        latents = ddim_sample(denoiser, index_cond(conds, rows), blank, (denoiser.latent_channels, side, side), 20,
                              6.0, torch.Generator().manual_seed(2000)).final
    read = domain.load_classifier().predict(model.decode(latents.float()).cpu())[domain.attribute_of(concept)]
    return 100 * sum(r == concept for r in read) / len(read)


def attacks(domain_name: str, concept: str, steps: int) -> dict[str, AttackConfig]:
    res = DOMAINS[domain_name].resolution
    _, _, keep = DOMAINS[domain_name].prompts(concept)
    held_out_word = keep[0].split()[-1]
    return {"textual_inversion": AttackConfig(attack="textual_inversion", steps=steps, resolution=res),
            "textual_inversion held out": AttackConfig(attack="textual_inversion", steps=2 * steps, seed=1,
                                                       init_word=held_out_word, resolution=res),
            "soft_prompt": AttackConfig(attack="soft_prompt", steps=steps, resolution=res)}


def run_domain(name: str, concept: str, quick: bool) -> list[dict]:
    domain = DOMAINS[name]
    model = domain.load_model()
    denoiser = domain.make_denoiser(model)
    text, _, _ = domain.prompts(concept)
    concepts = parse_concept_text(text)
    targets = denoiser.encode_prompts([t for t, _ in concepts.prompt_pairs()], (domain.resolution,) * 2)
    scorer = Probe(domain, model, denoiser, concept, 2 if quick else 8)
    steps = 30 if quick else 300
    rows = []
    control = probe(denoiser, Erasure(), concepts, attacks(name, concept, steps)["textual_inversion"])
    original_rate = target_rate(domain, model, denoiser, None, targets, concept)
    control_rate = target_rate(domain, model, denoiser, None, control.conditioning, concept)
    for mode, settings in MODES.items():
        config = EraseConfig(resolution=domain.resolution, **settings, **({"steps": 40} if quick else {}))
        started = time.monotonic()
        erasure = erase(denoiser, concepts, config)
        seconds = time.monotonic() - started
        with DeltaInjection(denoiser.net, erasure.names, erasure.delta):
            score = scorer.score()
        erased_rate = target_rate(domain, model, denoiser, erasure, targets, concept)
        for attack, attack_config in attacks(name, concept, steps).items():
            result = probe(denoiser, erasure, concepts, attack_config)
            rows.append(dict(domain=name, concept=concept, mode=mode, erase_seconds=round(seconds, 1),
                             stopped=erasure.metadata.stopped, attack=attack, attack_config=asdict(attack_config),
                             original=original_rate, erased=erased_rate,
                             attacked=target_rate(domain, model, denoiser, erasure, result.conditioning, concept),
                             control_on_original=control_rate, restored=max(result.restored()),
                             efficacy=score["efficacy"], in_domain=score["in_domain"], kid_x1000=score["kid_x1000"],
                             attack_seconds=round(result.seconds, 1)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| domain (concept) | mode | erase s | attack | original | erased | attacked | restored (probe) | "
             "in-domain | KID x1000 | control: attack on the original |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['domain']} ({r['concept']}) | {r['mode']} | {r['erase_seconds']:.0f} | {r['attack']} | "
                     f"{r['original']:.0f} % | {r['erased']:.0f} % | **{r['attacked']:.0f} %** | "
                     f"{100 * r['restored']:.0f} % | {r['in_domain']:+.1f} | {r['kid_x1000']:.1f} | "
                     f"{r['control_on_original']:.0f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs="+", default=list(CONCEPTS), choices=list(CONCEPTS))
    parser.add_argument("--quick", action="store_true", help="a fraction of the steps and seeds (a smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True, help="folder for results.json and table.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [row for name in args.domains for row in run_domain(name, CONCEPTS[name], args.quick)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "table.md").write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
