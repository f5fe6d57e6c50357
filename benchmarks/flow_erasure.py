"""Erase a shape from the flow demo model (a rectified-flow transformer in Flux's layout) with the engine's defaults.

    python benchmarks/flow_erasure.py [--concept circle] [--seeds 4] [--steps 60] [--out out/flow_erasure.json]

``EraseConfig()`` untouched except what the SD demo sets (resolution 64, a 10-step anchor pool), once
with its default divergence (hellinger) and once with mse at the same steps. The target and kept
prompts are the demo's (``main_job.demo_prompts``); images are sampled with fixed seeds before and
after and read by the demo's classifier (``erasure_quality.Probe``: how often the target prompts
still show the concept, how often the kept prompts show their own shape, and their colours).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from erasure_quality import DIVERGENCES, Probe
from unlearn_core.concepts import parse_concept_text
from unlearn_demo.domains import DOMAINS
from unlearn_core.injection import DeltaInjection
from unlearn_core.trainer import EraseConfig, erase

FLOW_DEMO = dict(resolution=64, sample_steps=10)  # what the SD demo sets; everything else is the default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--seeds", type=int, default=4, help="sampling seeds (1000, 1001, ...) per prompt")
    parser.add_argument("--steps", type=int, default=EraseConfig.steps)
    parser.add_argument("--divergences", nargs="+", default=["hellinger", "mse (KL)"], choices=tuple(DIVERGENCES))
    parser.add_argument("--target-mode", default=EraseConfig.target_mode, help="default: the engine's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    domain = DOMAINS["flow"]
    model = domain.load_model()
    denoiser = domain.make_denoiser(model)
    probe = Probe(domain, model, denoiser, args.concept, args.seeds)
    ref = probe.reference
    rows = [{"run": "original", "target_shows": ref["target_shows"], "kept_own_shape": ref["in_domain"],
             "colour_right": ref["cross_domain"]}]
    concepts = parse_concept_text(domain.prompts(args.concept)[0])
    anchors = [pair.anchor for pair in concepts.pairs]
    shown = [s for seed in range(args.seeds)
             for s in probe.clf.predict(model.generate(anchors, seed=1000 + seed, denoiser=denoiser))["shape"]]
    rows[0]["anchor_shows"] = 100 * shown.count(args.concept) / len(shown)
    for label in args.divergences:
        start = time.time()
        erasure = erase(denoiser, concepts, EraseConfig(**DIVERGENCES[label], steps=args.steps, target_mode=args.target_mode,
                                                       **FLOW_DEMO))
        seconds = time.time() - start
        with DeltaInjection(denoiser.net, erasure.names, erasure.delta):
            score = probe.score()
        rows.append({"run": f"{label}, {args.target_mode}", "steps": args.steps, "seconds": seconds, "target_shows": 100 - score["efficacy"],
                     "kept_own_shape": ref["in_domain"] + score["in_domain"],
                     "colour_right": ref["cross_domain"] + score["cross_domain"], "kid_x1000": score["kid_x1000"]})
    print(f"| run | steps | seconds | target prompts showing {args.concept} % | kept prompts showing their shape % "
          "| colour as prompted % | KID×1000 |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['run']} | {r.get('steps', '')} | {r.get('seconds', 0):.0f} | {r['target_shows']:.1f} | "
              f"{r['kept_own_shape']:.1f} | {r['colour_right']:.1f} | {r.get('kid_x1000', 0):.1f} |")
    print(f"the anchor prompts ({', '.join(anchors)}) show {args.concept} in {rows[0]['anchor_shows']:.1f} % "
          "of the original model's images")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"concept": args.concept, "seeds": args.seeds, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
