"""Erasure-quality benchmark on the demo models: Hellinger vs MSE vs the other f-divergences (issues 7, 17).

    python benchmarks/erasure_quality.py --mode full --workers 2 --out benchmarks/results/quality  # 88.5 min
    python benchmarks/erasure_quality.py --mode guidance --workers 2 --out benchmarks/results/quality_guidance
    python benchmarks/erasure_quality.py --mode quick --out out/quality       # CI: about a minute
    python benchmarks/erasure_quality.py --report benchmarks/results/quality/results.json  # tables, plots again
    python benchmarks/erasure_quality.py --anchors  # how often the anchors show the target (anchor mode's cap),
                                                   # and how clearly the model draws the kept prompts
    python benchmarks/erasure_quality.py --domain patterns --mode defaults --concepts checks dots --out out/patterns
    python benchmarks/erasure_quality.py --domain patterns --mode defaults --concepts checks dots --x-source latents
    python benchmarks/erasure_quality.py --domain patterns --mode defaults --concepts checks dots --anchors
    python benchmarks/erasure_quality.py --agreement --concepts circle red --eval-seeds 2  # probes vs classifier
    python benchmarks/erasure_quality.py --domain patterns --agreement --concepts dots checks --set sigma=0 \
        --set divergence=mse  # the same with other EraseConfig settings, at --agreement-steps 10 20 30 40 60

Every run erases one concept (a shape towards "shape", or a colour towards no colour) from the demo
model with one divergence, target mode, learning rate and seed, training the cross-attention K/V
deltas. The network is the demo's slim UNet, which computes exactly what the 320-channel ComfyUI
checkpoint computes (K/V gradients are zero outside its channels, so training it is training the
checkpoint). At fixed steps during training the run samples the target prompts and the kept prompts
with fixed seeds (the same noise as for the original model) and reads the images with the shipped
attribute classifier:

- efficacy: % of target images NOT showing the erased value (100 = erased);
- in-domain preservation: % of kept-prompt images showing their own value of the same attribute
  (other shapes stay shapes), relative to the original model's score;
- cross-domain preservation: % of all images showing the other attribute as prompted (colours of
  circles and squares), relative to the original;
- clearly drawn kept images lost (agreement rows): of the kept-prompt images the original model drew
  clearly (the classifier reads their own value with p >= 0.8), the % no longer read as it after;
- KID (x1000) between classifier features of kept-prompt images after and before, same seeds
  (features centred on the original model's mean and divided by its mean deviation);
- steps to 90% efficacy; gradient norm and S = ||eps_theta(x, c) - target||^2 at every step.

A second sweep scales sigma in the closed forms so that S/sigma^2 spans ~0.1 to ~10.
Outputs: ``results.json`` (every run), ``table.md`` (mean and 95% interval over concepts x seeds)
and PNG plots. Deterministic from the seeds.

``--domain patterns`` runs the same measurements on the second demo domain (grey patterns, pixel
space, cosine schedule; ``unlearn_demo.domains``): a mode's n concepts become its first n
patterns, each erased onto "a pattern" (``--concepts`` picks others). ``--mode defaults`` runs
``EraseConfig()`` untouched (what the engine and node default to, stopping by ``erase_until``, ``steps`` a cap)
with the domain's resolution, and tabulates each run's stop and its efficacy as a share of the concept's anchor
ceiling; ``--x-source latents`` gives the
erasure the model's own samples of the target prompts instead of the engine's anchor samples.
The grid modes (full, guidance, quick) turn ``keep_projection`` off and set ``guidance_eta`` to 1.0: they
compare the losses against the keep loss (with the projection every loss keeps the demos' kept prompts exactly),
as the tables in benchmarks/results/choosing_a_divergence.md were measured; ``--mode defaults`` and
``--agreement`` run the engine's defaults (``--set keep_projection=false``, ``--set guidance_eta=1`` change them).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from unlearn_core.concepts import parse_concept_text
from unlearn_demo.domains import DOMAINS, Domain
from unlearn_core.injection import DeltaInjection
from unlearn_core.samples import build_pool
from unlearn_core.targets import TARGET_MODES
from unlearn_core.steps import StepInfo
from unlearn_core.trainer import EraseConfig, erase

DIVERGENCES = {  # label -> EraseConfig fields
    "mse (KL)": {"divergence": "mse"},
    "hellinger": {"divergence": "hellinger"},
    "pearson chi2": {"divergence": "pearson_chi2"},
    "alpha 0.25": {"divergence": "alpha", "alpha": 0.25},
    "alpha 0.75": {"divergence": "alpha", "alpha": 0.75},
    "alpha 1.5": {"divergence": "alpha", "alpha": 1.5},
    "variational hellinger": {"divergence": "variational_hellinger"},
    "variational JS": {"divergence": "variational_jensen_shannon"},
    # Control: at S << sigma^2 Hellinger's loss -exp(-r/8) has gradient ~ grad(r)/8, i.e. MSE with its
    # erasure term weighted 1/8 against the (MSE) preservation term. MSE at sigma^2 = 8 is exactly that.
    "mse, sigma^2 = 8 (control)": {"divergence": "mse", "sigma": 8 ** 0.5},
    "engine defaults": {},  # EraseConfig() as it is: every setting the engine and the node default to
}
MODES = {
    # Main grid, every divergence x both target modes x 3 seeds x 4 concepts at one learning rate; the
    # learning-rate sweep repeats the anchor mode at a higher rate on one shape and one colour. Each
    # run is scored at several steps, so every (divergence, lr) traces a curve of steps.
    "full": dict(concepts=("circle", "square", "red", "blue"), divergences=tuple(DIVERGENCES),
                 target_modes=("anchor", "negative_guidance"), seeds=(0, 1, 2), learning_rates=(5e-4,),
                 lr_sweep=dict(concepts=("circle", "red"), target_modes=("anchor",), learning_rates=(2e-3,)),
                 steps=120, evals=(15, 30, 60, 120), eval_seeds=2,
                 sigma_concepts=("circle", "red"), sigma_ratios=(0.1, 1.0, 10.0),
                 sigma_divergences=("mse (KL)", "hellinger", "pearson chi2")),
    # The main job's target mode (anchor minus what makes the target differ from it), whose efficacy is
    # not capped by how often the anchor itself shows the target; the closed forms and the control.
    "guidance": dict(concepts=("circle", "square", "red", "blue"),
                     divergences=("mse (KL)", "hellinger", "pearson chi2", "mse, sigma^2 = 8 (control)"),
                     target_modes=("anchor_guidance",), seeds=(0, 1, 2), learning_rates=(5e-4,), lr_sweep=None,
                     steps=120, evals=(15, 30, 60, 120), eval_seeds=2, sigma_concepts=(), sigma_ratios=(),
                     sigma_divergences=()),
    "quick": dict(concepts=("circle",), divergences=("mse (KL)", "hellinger", "pearson chi2"),
                  target_modes=("anchor",), seeds=(0,), learning_rates=(1e-3,), lr_sweep=None, steps=40,
                  evals=(20, 40), eval_seeds=2, sigma_concepts=("circle",), sigma_ratios=(10.0,),
                  sigma_divergences=("hellinger",)),
    # The engine's defaults untouched (divergence, target mode, lr, steps, batch, pool): what a new user
    # gets on a model nobody tuned for. steps/evals are the defaults' own (filled in at run time).
    "defaults": dict(concepts=("circle", "square", "red", "blue"), divergences=("engine defaults",),
                     target_modes=(None,),
                     seeds=(0,), learning_rates=(None,), lr_sweep=None, steps=None, evals=None, eval_seeds=8,
                     sigma_concepts=(), sigma_ratios=(), sigma_divergences=()),
}
CONFIDENT = 0.8  # a kept image is drawn clearly when the classifier gives its own value at least this probability

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 15: 2.131, 20: 2.086, 30: 2.042}


def kid(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2_u = sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j) - k(x_i,y_j) - k(x_j,y_i)] / (n(n-1)), k(a,b) = (a.b/d + 1)^3.

    Equal sample sizes; the i = j cross terms are left out too, so paired samples (the same seed
    before and after) do not bias it (Gretton et al. 2012, eq. 3, with KID's kernel).
    """
    n, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    off = 1 - torch.eye(n, dtype=x.dtype)
    return float(((kxx + kyy - kxy - kxy.T) * off).sum() / (n * (n - 1)))


HISTORY_COLUMNS = ("step", "loss", "mean_s", "grad_norm")  # a run's logged steps, by column


def steps_of(run: dict) -> dict[str, list[float]]:
    """A run's logged steps by column; results.json files written before the columns held rows of HISTORY_COLUMNS."""
    history = run["history"]
    if isinstance(history, dict):
        return history
    return {column: [row[i] for row in history] for i, column in enumerate(HISTORY_COLUMNS)}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval."""
    v = np.array([x for x in values if math.isfinite(x)], dtype=float)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else math.nan), math.nan
    dof = len(v) - 1
    t = T_975[max(k for k in T_975 if k <= dof)]
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(len(v)))


_REFERENCES: dict = {}  # (model, concept, seeds) -> the original model's samples, shared by the runs


class Probe:
    """Samples the target and kept prompts of one concept with fixed seeds and scores them."""

    def __init__(self, domain: Domain, model: torch.nn.Module, denoiser, concept: str, seeds: int):
        self.domain, self.model, self.denoiser, self.clf = domain, model, denoiser, domain.load_classifier()
        _, targets, self.keep = domain.prompts(concept)
        self.targets = [t for t, _ in targets]
        self.attr, self.other = domain.attribute_of(concept), domain.other_attribute(concept)
        self.concept, self.seeds = concept, seeds
        key = (id(model), concept, seeds)  # erase() leaves the model unmodified, so one sampling serves all runs
        if key not in _REFERENCES:
            _REFERENCES[key] = self._sample()
        self.reference = _REFERENCES[key]

    @torch.no_grad()
    def _sample(self) -> dict:
        prompts = self.targets + self.keep
        preds = {self.attr: [], self.other: []}
        feats, own_prob = [], []
        named = [self.domain.named(p) for p in prompts]
        own = torch.tensor([self.domain.attributes[self.attr].index(n[self.attr]) for n in named[len(self.targets):]])
        for seed in range(self.seeds):
            images = self.model.generate(prompts, seed=1000 + seed, denoiser=self.denoiser)
            p = self.clf.predict(images)
            for attr in preds:
                preds[attr] += p[attr]
            kept = images[len(self.targets):]
            feats.append(self.clf.features_of(kept))
            own_prob.append(torch.softmax(self.clf(kept)[self.attr], -1)[torch.arange(len(own)), own])
        named = named * self.seeds
        n_t = len(self.targets)
        is_target = [i % len(prompts) < n_t for i in range(len(named))]
        hit = {a: [p == n[a] for p, n in zip(preds[a], named)] for a in preds}
        return {
            "target_shows": 100 * np.mean([h for h, t in zip(hit[self.attr], is_target) if t]),
            "in_domain": 100 * np.mean([h for h, t in zip(hit[self.attr], is_target) if not t]),
            "cross_domain": 100 * np.mean(hit[self.other]),
            "features": torch.cat(feats),
            "kept_hit": np.array([h for h, t in zip(hit[self.attr], is_target) if not t]),
            "kept_clear": torch.cat(own_prob).numpy() >= CONFIDENT,  # read as its own value with p >= CONFIDENT
        }

    @torch.no_grad()
    def score(self) -> dict:
        now = self._sample()
        ref = self.reference
        # centre on the original model's features and scale them all by one number, their mean spread, so the
        # cubic kernel sees unit-scale inputs; a per-feature scale would magnify the features that barely vary in
        # the original images (spread 0.01 beside a median 0.7 on the pattern domains) into KIDs of 10^5
        mu, sd = ref["features"].mean(0), ref["features"].std(0).mean() + 1e-6
        clear = ref["kept_clear"]
        return {"efficacy": 100 - now["target_shows"],
                "in_domain": now["in_domain"] - ref["in_domain"],
                # of the kept images the original model drew clearly (read as their own value with p >= CONFIDENT),
                # the % no longer read as it: what in_domain counts, without images near a decision boundary
                "clear_kept_lost": 100 * float(np.mean(~now["kept_hit"][clear])) if clear.any() else math.nan,
                "cross_domain": now["cross_domain"] - ref["cross_domain"],
                "kid_x1000": 1000 * kid((now["features"] - mu) / sd, (ref["features"] - mu) / sd)}


def one_run(model: torch.nn.Module, concept: str, label: str, target_mode: str, lr: float, seed: int, steps: int,
            evals: tuple[int, ...], eval_seeds: int, sigma: float = 1.0, ratio: float | None = None,
            domain: str = "shapes", x_source: str = "anchor_samples") -> dict:
    dom = DOMAINS[domain]
    denoiser = dom.make_denoiser(model)
    probe = Probe(dom, model, denoiser, concept, eval_seeds)
    text, _, _ = dom.prompts(concept)
    bench = DIVERGENCES[label] if label.startswith("engine defaults") else dict(
        sigma=sigma, **DIVERGENCES[label], target_mode=target_mode, learning_rate=lr, steps=steps, sample_steps=10,
        erase_until=0,  # the grid scores every run at the same steps
        keep_projection=False,  # and compares the losses against the keep loss (keep_projection keeps the demos'
        # kept prompts exactly whatever the loss)
        guidance_eta=1.0)  # as benchmarks/results/choosing_a_divergence.md was measured
    config = EraseConfig(**bench, seed=seed, resolution=dom.resolution, x_source=x_source)
    latents = None
    if x_source == "latents":  # the model's own samples of the target prompts, as a user would encode them
        latents = dom.own_latents(model, [probe.targets[i % len(probe.targets)] for i in range(config.num_samples)],
                                  500)
    history, scores = {column: [] for column in HISTORY_COLUMNS}, {}

    def callback(info: StepInfo) -> None:
        if info.phase != "training":
            return
        for column in HISTORY_COLUMNS:
            history[column].append(getattr(info, column))
        if info.step in evals:  # the trained deltas are live on the network during the callback
            scores[info.step] = probe.score()

    started = time.time()
    erasure = erase(denoiser, parse_concept_text(text), config, user_latents=latents, callback=callback)
    if any(s not in scores for s in evals):  # erase_until stopped it early: the returned state is the final one
        with DeltaInjection(denoiser.net, erasure.names, erasure.delta):
            final = probe.score()
        scores.update({s: final for s in evals if s not in scores})
    efficacies = [(s, scores[s]["efficacy"]) for s in evals]
    return {"concept": concept, "divergence": label, "target_mode": config.target_mode, "lr": config.learning_rate,
            "seed": seed, "sigma": config.sigma, "ratio": ratio, "config": asdict(config), "domain": domain,
            "steps_run": len(history["step"]), "stop": erasure.metadata.stop.value,
            "stopped": erasure.metadata.stopped,
            "seconds": time.time() - started,
            "before": {k: v for k, v in probe.reference.items() if k not in ("features", "kept_hit", "kept_clear")},
            "evals": {str(s): v for s, v in scores.items()},
            "steps_to_90": next((s for s, e in efficacies if e >= 90), None),
            "history": history}


def anchor_rates(domain: Domain, model: torch.nn.Module, concepts: tuple[str, ...], seeds: int = 8) -> dict[str, float]:
    """% of the original model's images of each concept's anchor prompts that show the concept itself.

    Anchor mode trains the target towards the anchor, so this caps its efficacy near 100 minus it.
    """
    denoiser, clf, rates = domain.make_denoiser(model), domain.load_classifier(), {}
    for concept in concepts:
        text, _, _ = domain.prompts(concept)
        anchors = [line.split(" -> ")[1] for line in text.splitlines() if " -> " in line]
        attr = domain.attribute_of(concept)
        hits = [p == concept for seed in range(seeds)
                for p in clf.predict(model.generate(anchors, seed=1000 + seed, denoiser=denoiser))[attr]]
        rates[concept] = 100 * float(np.mean(hits))
    return rates


def kept_confidence(domain: Domain, model: torch.nn.Module, concept: str, seeds: int = 8) -> dict[str, float]:
    """% of the original model's images of each kept prompt that the classifier reads as the prompt's own value
    with probability >= CONFIDENT (the benchmark's own samples of them, ``Probe``).

    The in-domain score counts kept images whose reading changes; images the classifier reads near a decision
    boundary (a texture between two patterns) can change reading on a small change, which this shows.
    """
    probe = Probe(domain, model, domain.make_denoiser(model), concept, seeds)
    clear = probe.reference["kept_clear"].reshape(seeds, len(probe.keep))
    return {p: 100 * float(clear[:, i].mean()) for i, p in enumerate(probe.keep)}


@torch.no_grad()
def pool_spread(domain: Domain, model: torch.nn.Module, concept: str) -> dict[str, float]:
    """Standard deviation and largest |value| of the engine's anchor-sample pool and of the model's own samples.

    With EraseConfig's pool settings; on a schedule whose terminal abar is ~0 a sampler that divides by
    sqrt(abar_T) makes the pool explode, and the erasure then trains on those values.
    """
    config, denoiser = EraseConfig(), domain.make_denoiser(model)
    text, targets, _ = domain.prompts(concept)
    anchors = [line.split(" -> ")[1] for line in text.splitlines() if " -> " in line]
    size = (domain.resolution, domain.resolution)
    side = domain.resolution // 8
    pool = build_pool("anchor_samples", denoiser, denoiser.encode_prompts(anchors, size),
                      denoiser.encode_prompts([""] * len(anchors), size), config.num_samples,
                      (denoiser.latent_channels, side, side), config.sample_steps, config.sample_guidance,
                      torch.Generator().manual_seed(0)).x0
    own = domain.own_latents(model, [t for t, _ in targets], 0)
    return {"pool_std": pool.std().item(), "pool_max": pool.abs().max().item(),
            "own_std": own.std().item(), "own_max": own.abs().max().item()}


def _plan(plan: dict, domain: Domain) -> dict:
    """The mode's plan for ``domain``: its concepts mapped onto the domain's (the first n values of its first
    attribute), and the engine's own steps, target mode and learning rate where the plan leaves them open."""
    if domain.name != "shapes":
        own = next(iter(domain.attributes.values()))
        plan = {**plan, **{key: own[:len(plan[key])] for key in ("concepts", "sigma_concepts")}}
        if plan["lr_sweep"]:
            plan["lr_sweep"] = {**plan["lr_sweep"], "concepts": own[:len(plan["lr_sweep"]["concepts"])]}
    if plan["steps"] is None:
        defaults = EraseConfig()
        steps = defaults.steps
        plan = {**plan, "steps": steps, "evals": tuple(sorted({steps // 4, steps // 2, steps})),
                "target_modes": (defaults.target_mode,), "learning_rates": (defaults.learning_rate,)}
    return plan


def report_agreement(domain: Domain, model: torch.nn.Module, concepts: tuple[str, ...],
                     checkpoints: tuple[int, ...], eval_seeds: int, **settings) -> list[dict]:
    """What erase_until reads beside the classifier: per concept, one erasure with the engine's defaults
    (``settings`` override them) run to the last checkpoint; at each checkpoint the trainer's own probe
    numbers (least "moved" onto the anchor and least progress towards the target mode's aim over the pairs,
    what erase_until compares, largest keep drift) and the classifier's efficacy (% of target images no longer
    showing the concept). Then how often the two agree (``agreement``)."""
    denoiser, rows = domain.make_denoiser(model), []
    ceilings = {c: 100 - rate for c, rate in anchor_rates(domain, model, concepts).items()}
    for concept in concepts:
        probe = Probe(domain, model, denoiser, concept, eval_seeds)
        concept_set = parse_concept_text(domain.prompts(concept)[0])
        config = EraseConfig(**{**dict(resolution=domain.resolution, sample_steps=10), **settings,
                                "steps": max(checkpoints), "erase_until": 5.0, "check_every": math.gcd(*checkpoints)})

        def callback(info: StepInfo) -> None:
            if info.phase == "training" and info.step in checkpoints and math.isfinite(info.progress):
                rows.append({"domain": domain.name, "concept": concept, "setting": label, "steps": info.step,
                             **probe.score(), "ceiling": ceilings[concept], "moved": 100 * info.moved,
                             "progress": 100 * info.progress, "erased": 100 * info.erased, "drift": 100 * info.drift,
                             "sigma": info.sigma, "seconds": time.time() - started})
                print("| {domain} | {concept} | {setting} | {steps} | {efficacy:.0f} | {moved:.0f} | {progress:.0f} | "
                      "{drift:.1f} | {in_domain:+.1f} | {clear_kept_lost:.1f} | {kid_x1000:.0f} | {seconds:.0f} |"
                      .format(**rows[-1]), flush=True)

        label = ", ".join([config.target_mode] + [f"{k} {v}" for k, v in settings.items() if k != "target_mode"])
        print(f"| {domain.name} | {concept} | {label} | 0 | {100 - probe.reference['target_shows']:.0f} "
              "| 0 | 0 | 0 | 0 | 0 | 0 | 0 |", flush=True)
        started = time.time()
        first = len(rows)
        erasure = erase(denoiser, concept_set, config, callback=callback)
        until = settings.get("erase_until", EraseConfig.erase_until)
        if until < 0:  # auto: what the run would have resolved it to (its mode and eta)
            until = TARGET_MODES[config.target_mode].auto_erase_until(erasure.metadata.config.guidance_eta)
        for row in rows[first:]:
            row["erase_until"] = until
    print("\n" + agreement(rows, settings.get("check_every", EraseConfig.check_every)))
    return rows


AGREEMENT_THRESHOLDS = (0.9, 1.0, 1.1, 1.15, 1.2, 1.3)


def agreement(rows: list[dict], check_every: int) -> str:
    """Over every checkpoint, per threshold: how often "what erase_until reads >= it" and "the classifier sees
    >= 90 % of the concept's ceiling gone" say the same, and how many checkpoints would stop too early (by that
    bar, and by the stricter 90 % gone, which a concept with a low ceiling may never reach); then, per concept,
    where erase_until would stop (the first checkpoint on the check_every grid that reaches it) and what the
    classifier sees there. The ceiling is 100 % minus how often the original model's anchor images show the
    concept (anchor mode's limit)."""
    at_ceiling = [r["efficacy"] >= 0.9 * r["ceiling"] for r in rows]
    at_90 = [r["efficacy"] >= 90 for r in rows]

    def row(label: str, count) -> str:
        return f"| {label} | " + " | ".join(count(round(100 * t, 6)) for t in AGREEMENT_THRESHOLDS) + " |"

    lines = ["| erase_until | " + " | ".join(f"{t:.0%}" for t in AGREEMENT_THRESHOLDS) + " |",
             "| --- " * (len(AGREEMENT_THRESHOLDS) + 1) + "|",
             row("checkpoints where probes and classifier (≥ 90 % of the ceiling gone) agree",
                 lambda t: f"{100 * np.mean([(r['erased'] >= t) == e for r, e in zip(rows, at_ceiling)]):.0f} %"),
             row("probes read erased, classifier sees < 90 % of the ceiling gone (a premature stop)",
                 lambda t: str(sum(r["erased"] >= t and not e for r, e in zip(rows, at_ceiling)))),
             row("probes read erased, classifier sees < 90 % gone",
                 lambda t: str(sum(r["erased"] >= t and not e for r, e in zip(rows, at_90)))),
             f"({len(rows)} checkpoints)", "",
             f"| concept | erase_until (checked every {check_every}) stops at | target gone "
             "(ceiling) | in-domain Δ pts | clearly drawn kept images lost % | KID×1000 | at the last checkpoint: "
             "gone, in-domain Δ |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for concept in dict.fromkeys(r["concept"] for r in rows):
        mine = [r for r in rows if r["concept"] == concept]
        until = mine[0]["erase_until"]
        stop = next((r for r in mine if r["steps"] % check_every == 0 and r["erased"] >= round(100 * until, 6)), None)
        last = mine[-1]
        at = stop or last
        where = (f"{until:.0%}: step {stop['steps']}" if stop else f"{until:.0%}: not reached in {last['steps']} steps")
        lines.append(f"| {concept} | {where} | {at['efficacy']:.0f} % ({at['ceiling']:.0f} %) | {at['in_domain']:+.1f} "
                     f"| {at['clear_kept_lost']:.1f} | {at['kid_x1000']:.0f} | {last['efficacy']:.0f} %, {last['in_domain']:+.1f} |")
    return "\n".join(lines)


_WORKER: dict = {}


def _start_worker(threads: int, domain: str) -> None:
    torch.set_num_threads(threads)
    _WORKER["model"] = DOMAINS[domain].load_model()


def _run_in_worker(job: dict) -> dict:
    return one_run(_WORKER["model"], **job)


def run_all(jobs: list[dict], workers: int, describe, domain: str = "shapes") -> list[dict]:
    """Run the jobs on ``workers`` processes of one thread each (in this process when 1), in order."""
    if not jobs:
        return []
    if workers == 1:
        _start_worker(min(2, torch.get_num_threads()), domain)
        results = map(_run_in_worker, jobs)
        return [describe(i, len(jobs), run) for i, run in enumerate(results, 1)]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with context.Pool(workers, initializer=_start_worker, initargs=(1, domain)) as pool:
        return [describe(i, len(jobs), run) for i, run in enumerate(pool.imap(_run_in_worker, jobs), 1)]


def groups(runs: list[dict]) -> dict[tuple, list[dict]]:
    """The runs by (target mode, lr, divergence), in that order."""
    keys = sorted({(r["target_mode"], r["lr"], r["divergence"]) for r in runs},
                  key=lambda k: (k[0], k[1], list(DIVERGENCES).index(k[2])))
    return {k: [r for r in runs if (r["target_mode"], r["lr"], r["divergence"]) == k] for k in keys}


def aggregate(runs: list[dict], final_step: int) -> list[dict]:
    """Mean and 95% interval over concepts x seeds, per divergence, target mode and learning rate."""
    rows = []
    by_divergence = sorted(groups(runs).items(), key=lambda item: list(DIVERGENCES).index(item[0][2]))  # stable
    for (mode, lr, div), group in by_divergence:
        finals = [r["evals"][str(final_step)] for r in group]
        row = {"divergence": div, "target_mode": mode, "lr": lr, "n": len(group)}
        for metric in ("efficacy", "in_domain", "cross_domain", "kid_x1000"):
            row[metric] = interval([f[metric] for f in finals])
        row["steps_to_90"] = interval([r["steps_to_90"] if r["steps_to_90"] else math.nan for r in group])
        row["reached_90"] = sum(r["steps_to_90"] is not None for r in group)
        row["grad_norm"] = interval([float(np.mean(steps_of(r)["grad_norm"])) for r in group])
        row["S"] = interval([float(np.median(steps_of(r)["mean_s"])) for r in group])
        rows.append(row)
    return rows


def _fmt(pair: tuple[float, float], digits: int = 1) -> str:
    mean, half = pair
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{mean:.{digits}f}"


def table(rows: list[dict], final_step: int, heading: str | None = None) -> str:
    lines = ["| divergence | target mode | lr | efficacy % | in-domain Δ pts | cross-domain Δ pts | KID×1000 | "
             "steps to 90% (reached) | mean grad norm | median S |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['divergence']} | {r['target_mode']} | {r['lr']:g} | {_fmt(r['efficacy'])} | "
                     f"{_fmt(r['in_domain'])} | {_fmt(r['cross_domain'])} | {_fmt(r['kid_x1000'], 2)} | "
                     f"{_fmt(r['steps_to_90'], 0)} ({r['reached_90']}/{r['n']}) | {_fmt(r['grad_norm'], 3)} | "
                     f"{_fmt(r['S'], 4)} |")
    heading = heading or f"After {final_step} steps"
    return f"{heading}; mean ± 95% interval over concepts × seeds.\n\n" + "\n".join(lines) + "\n"


def stop_table(runs: list[dict], anchor_rates: dict[str, float], final_step: int) -> str:
    """Each run's end (why it stopped, at which step) and its final scores, the efficacy also as a share of the
    anchor ceiling (100 minus how often the anchor prompts themselves show the target)."""
    lines = ["| concept | stopped | steps | target gone % | ceiling % | of the ceiling % | in-domain Δ pts | "
             "clearly drawn kept lost % | cross-domain Δ pts | KID×1000 | seconds |", "| --- " * 11 + "|"]
    for r in runs:
        final, ceiling = r["evals"][str(final_step)], 100 - anchor_rates[r["concept"]]
        lines.append(f"| {r['concept']} | {r['stop']} | {r['steps_run']} | {final['efficacy']:.0f} | {ceiling:.0f} | "
                     f"{100 * final['efficacy'] / ceiling:.0f} | {final['in_domain']:+.1f} | "
                     f"{final['clear_kept_lost']:.1f} | {final['cross_domain']:+.1f} | {final['kid_x1000']:.1f} | "
                     f"{r['seconds']:.0f} |")
    return ("Each run's end: `stop` is why it ended (`erase_until`: the measure was reached; `settled`: every target "
            "past its anchor and no longer moving; `steps_cap`: the cap, a warning).\n\n" + "\n".join(lines) + "\n")


def mean_curve(group: list[dict], evals: tuple[int, ...], metric: str) -> list[float]:
    """The metric's mean over the runs at step 0 (the original model: every Δ is 0) and at each evaluated step."""
    start = float(np.mean([100 - r["before"]["target_shows"] for r in group])) if metric == "efficacy" else 0.0
    return [start] + [float(np.mean([r["evals"][str(s)][metric] for r in group])) for s in evals]


def matched_efficacy(runs: list[dict], evals: tuple[int, ...], levels: tuple[int, ...] = (50, 75, 90)) -> list[dict]:
    """Preservation at equal efficacy: where each mean curve (step 0, then the evals) first crosses a level.

    Linear interpolation between the two evaluated steps around the crossing; None where the curve
    never reaches the level. This is the comparison "dominates" means: less damage for the same erasure.
    """
    rows = []
    for (mode, lr, div), group in groups(runs).items():
        metrics = [mean_curve(group, evals, m) for m in ("efficacy", "in_domain", "cross_domain", "kid_x1000")]
        curve = list(zip((0, *evals), *metrics))  # (step, efficacy, in, cross, KID) per point
        row = {"divergence": div, "target_mode": mode, "lr": lr, "n": len(group)}
        for level in levels:
            row[level] = None
            for a, b in zip(curve, curve[1:]):
                if a[1] < level <= b[1]:
                    w = (level - a[1]) / (b[1] - a[1])
                    row[level] = [a[i] + w * (b[i] - a[i]) for i in (0, 2, 3, 4)]  # step, in, cross, KID
                    break
            else:
                if curve[0][1] >= level:
                    row[level] = [0.0, 0.0, 0.0, 0.0]
        rows.append(row)
    return rows


def matched_table(rows: list[dict], levels: tuple[int, ...] = (50, 75, 90)) -> str:
    head = " | ".join(f"at {v}%: step, in-domain Δ, KID×1000" for v in levels)
    lines = [f"| target mode | lr | divergence | n | {head} |", "|" + " --- |" * (4 + len(levels))]
    for r in rows:
        cells = [("—" if r[v] is None else f"{r[v][0]:.0f}, {r[v][1]:+.1f}, {r[v][3]:.1f}") for v in levels]
        lines.append(f"| {r['target_mode']} | {r['lr']:g} | {r['divergence']} | {r['n']} | " + " | ".join(cells) + " |")
    return ("Preservation at matched efficacy: the mean curve over concepts × seeds (step 0 = the original "
            "model) interpolated where it first reaches 50 / 75 / 90 % efficacy; — = never reached.\n\n"
            + "\n".join(lines) + "\n")


def sigma_table(sigma_runs: list[dict], final_step: int) -> str:
    lines = ["| concept | divergence | S/σ² asked | σ | S/σ² in the run: median (p10–p90) | efficacy % | "
             "in-domain Δ pts | KID×1000 |", "|" + " --- |" * 8]
    for r in sigma_runs:
        ratio = np.array(steps_of(r)["mean_s"]) / r["sigma"] ** 2
        final = r["evals"][str(final_step)]
        lines.append(f"| {r['concept']} | {r['divergence']} | {r['ratio']:g} | {r['sigma']:.3g} | "
                     f"{np.median(ratio):.3g} ({np.percentile(ratio, 10):.3g}–{np.percentile(ratio, 90):.3g}) | "
                     f"{final['efficacy']:.0f} | {final['in_domain']:+.1f} | {final['kid_x1000']:.1f} |")
    return f"Sigma sweep (anchor mode, one seed), after {final_step} steps.\n\n" + "\n".join(lines) + "\n"


def write_report(result: dict, out: Path) -> list[Path]:
    """table.md and the plots, from a results.json's content."""
    meta, plan = result["meta"], result["meta"]["plan"]
    steps, evals = plan["steps"], tuple(plan["evals"])
    rows = aggregate(result["runs"], steps)
    text = (f"`{meta['command']}` ({meta['date']}, {meta['seconds'] / 60:.1f} min, {meta['workers']} worker(s))\n\n"
            + table(rows, steps, heading=f"At each run's end (the steps cap is {steps})" if "anchor_rates" in meta
                    else None)
            + "\n" + matched_table(matched_efficacy(result["runs"], evals)))
    if result["sigma_runs"]:
        text += "\n" + sigma_table(result["sigma_runs"], steps)
    if "anchor_rates" in meta:
        text += "\n" + stop_table(result["runs"], meta["anchor_rates"], steps)
    (out / "table.md").write_text(text)
    print(text)
    return [out / "table.md"] + plots(result["runs"], result["sigma_runs"], evals, out)


def _save_figure(fig, axes, path: Path, legend_size: int) -> Path:
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(runs: list[dict], sigma_runs: list[dict], evals: tuple[int, ...], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [d for d in DIVERGENCES if any(r["divergence"] == d for r in runs)]
    colours = dict(zip(labels, plt.cm.tab10.colors))
    modes = sorted({r["target_mode"] for r in runs})
    written = []

    by_group = groups(runs)
    panels = sorted({(mode, lr) for mode, lr, _ in by_group})
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 9), squeeze=False)
    for col, (mode, lr) in enumerate(panels):
        panel = {label: group for (m, rate, label), group in by_group.items() if (m, rate) == (mode, lr)}
        for label, group in panel.items():
            xs = mean_curve(group, evals, "efficacy")
            for row, metric in enumerate(("in_domain", "kid_x1000")):
                axes[row][col].plot(xs, mean_curve(group, evals, metric), "-o", color=colours[label], label=label,
                                    markersize=3, lw=1.2)
        axes[0][col].set(ylabel="in-domain preservation Δ points",
                         title=f"{mode}, lr {lr:g} ({len(group)} runs per line)\npoints: steps 0, {evals}")
        axes[1][col].set(xlabel="efficacy % (target images not showing the concept)",
                         ylabel="KID×1000 on kept prompts (vs original)")
        for ax in axes[:, col]:
            ax.axhline(0, color="grey", lw=0.5)
    written.append(_save_figure(fig, [axes[0][0]], out / "efficacy_vs_preservation.png", 7))

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    top_lr = max({r["lr"] for r in runs}, key=lambda lr: sum(r["lr"] == lr for r in runs))  # the main grid's
    for label in labels:
        group = [r for r in runs if r["divergence"] == label and r["target_mode"] == modes[0] and r["lr"] == top_lr]
        if not group:
            continue
        axes[0].plot((0, *evals), mean_curve(group, evals, "efficacy"), "-o", color=colours[label], label=label)
        longest = max(len(steps_of(r)["step"]) for r in group)  # erase_until can stop a run early
        hist = np.array([steps_of(r)["grad_norm"] + [np.nan] * (longest - len(steps_of(r)["step"])) for r in group])
        axes[1].plot(np.arange(1, longest + 1), np.nanmean(hist, 0), color=colours[label], label=label, lw=1)
        s_vals = np.concatenate([steps_of(r)["mean_s"] for r in group])
        g_vals = np.concatenate([steps_of(r)["grad_norm"] for r in group])
        axes[2].scatter(s_vals, g_vals, s=3, color=colours[label], label=label, alpha=0.4)
    axes[0].set(xlabel="step", ylabel="efficacy %", title=f"efficacy over steps ({modes[0]}, lr {top_lr:g})")
    axes[1].set(xlabel="step", ylabel="gradient norm (before clipping)", yscale="log", title="gradient norm over steps")
    axes[2].set(xlabel="S = ||eps_theta - target||^2", ylabel="gradient norm", xscale="log", yscale="log",
                title="gradient norm against S")
    written.append(_save_figure(fig, axes, out / "training_dynamics.png", 6))

    if sigma_runs:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        final = str(max(evals))
        for label in sorted({r["divergence"] for r in sigma_runs}, key=list(DIVERGENCES).index):
            group = [r for r in sigma_runs if r["divergence"] == label]
            ratios = sorted({r["ratio"] for r in group})
            eff = [np.mean([r["evals"][final]["efficacy"] for r in group if r["ratio"] == q]) for q in ratios]
            pres = [np.mean([r["evals"][final]["in_domain"] for r in group if r["ratio"] == q]) for q in ratios]
            axes[0].plot(ratios, eff, "-o", color=colours.get(label), label=label)
            axes[1].plot(ratios, pres, "-o", color=colours.get(label), label=label)
        axes[0].set(xscale="log", xlabel="S / sigma^2 (median S of the sigma = 1 run)", ylabel="efficacy %",
                    title="sigma sweep: efficacy")
        axes[1].set(xscale="log", xlabel="S / sigma^2", ylabel="in-domain Δ points", title="sigma sweep: preservation")
        written.append(_save_figure(fig, axes, out / "sigma_sweep.png", 7))
    return written


def _parse_bool(text: str) -> bool:
    """--set keep_projection=false: true/false (any case), 1/0."""
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise SystemExit(f"--set: {text!r} is not a boolean; write true or false")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=tuple(MODES), default="quick")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"))
    parser.add_argument("--workers", type=int, default=1,
                        help="processes of one thread each (2 on a 2-core machine runs ~1.3x faster than 1 process)")
    parser.add_argument("--anchors", action="store_true",
                        help="run nothing else: print how often each concept's anchor prompts show the concept")
    parser.add_argument("--agreement", action="store_true",
                        help="run nothing else: the Erasure Report's numbers beside the classifier's "
                             "(benchmarks/results/erasure_report_agreement.md)")
    parser.add_argument("--agreement-steps", type=int, nargs="+", default=[10, 20, 30, 40, 60], metavar="STEP",
                        help="--agreement: the steps at which to read the probes and the classifier")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="--agreement: an EraseConfig setting instead of the default (repeatable), e.g. sigma=0")
    parser.add_argument("--eval-seeds", type=int, default=4,
                        help="--agreement: sampling seeds per target prompt for the classifier")
    parser.add_argument("--report", type=Path, metavar="RESULTS_JSON",
                        help="run nothing: rewrite table.md and the plots next to this results.json")
    parser.add_argument("--domain", choices=tuple(DOMAINS), default="shapes",
                        help="the demo model to erase from; on patterns a mode's n concepts are its first n patterns")
    parser.add_argument("--x-source", choices=("anchor_samples", "latents"), default="anchor_samples",
                        help="the erasure's x_t pool: the engine's anchor samples, or the model's own samples of "
                             "the target prompts given as latents")
    parser.add_argument("--concepts", nargs="+", metavar="CONCEPT", help="erase these instead of the mode's concepts")
    args = parser.parse_args(argv)
    domain = DOMAINS[args.domain]
    plan = _plan(MODES[args.mode], domain)
    if args.concepts:
        plan = {**plan, "concepts": tuple(args.concepts), "sigma_concepts": (), "lr_sweep": None}
    if args.anchors:
        model = domain.load_model()
        for concept, rate in anchor_rates(domain, model, plan["concepts"]).items():
            spread = pool_spread(domain, model, concept)
            print(f"{concept}: the anchor prompts show {concept!r} in {rate:.0f}% of the original model's images; "
                  f"the engine's anchor pool has std {spread['pool_std']:.3g}, max |x| {spread['pool_max']:.3g} "
                  f"(the model's own samples: std {spread['own_std']:.3g}, max |x| {spread['own_max']:.3g})")
            confidence = kept_confidence(domain, model, concept)
            print(f"  its kept prompts' images read as their own {domain.attribute_of(concept)} with p >= "
                  f"{CONFIDENT}: " + ", ".join(f"{p} {v:.0f}%" for p, v in confidence.items())
                  + f" (all: {np.mean(list(confidence.values())):.0f}%)")
        return 0
    if args.agreement:
        print("| domain | concept | settings | steps | classifier: target gone % | moved % (least pair) | "
              "progress to the aim % (least pair) | largest keep drift % | in-domain Δ pts | clearly drawn kept images "
              "lost % | KID×1000 | seconds |\n" + "| --- " * 12 + "|")
        concepts = args.concepts or (("circle", "red") if args.domain == "shapes" else plan["concepts"][:2])
        fields = {f.name: f.type for f in dataclasses.fields(EraseConfig)}
        settings = {k: {"float": float, "int": int, "bool": _parse_bool}.get(fields[k], str)(v)
                    for k, v in (item.split("=", 1) for item in args.set)}
        report_agreement(domain, domain.load_model(), tuple(concepts), tuple(args.agreement_steps),
                         eval_seeds=args.eval_seeds, **settings)
        return 0
    if args.report:
        written = write_report(json.loads(args.report.read_text()), args.report.parent)
        print("wrote " + ", ".join(str(p) for p in written))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    common = dict(steps=plan["steps"], evals=plan["evals"], eval_seeds=plan["eval_seeds"], domain=args.domain,
                  x_source=args.x_source)
    grids = [plan] + ([{**plan, **plan["lr_sweep"]}] if plan["lr_sweep"] else [])
    jobs = [dict(concept=c, label=d, target_mode=m, lr=lr, seed=seed, **common)
            for g in grids for c, d, m, lr, seed in itertools.product(
                g["concepts"], plan["divergences"], g["target_modes"], g["learning_rates"], plan["seeds"])]

    def describe(i: int, n: int, run: dict) -> dict:
        final = run["evals"][str(plan["steps"])]
        print(f"[{i}/{n}] {run['concept']:>6} {run['divergence']:<22} {run['target_mode']:<17} lr {run['lr']:g} "
              f"seed {run['seed']}: efficacy {final['efficacy']:.0f}% in-domain {final['in_domain']:+.0f} "
              f"cross {final['cross_domain']:+.0f} KID {final['kid_x1000']:.2f} ({run['seconds']:.0f} s)", flush=True)
        return run

    runs = run_all(jobs, args.workers, describe, args.domain)

    # sigma sweep: S / sigma^2 at chosen ratios, from the median S of the sigma = 1 run
    lr0 = plan["learning_rates"][0]
    sigma_jobs = []
    for concept, label in itertools.product(plan["sigma_concepts"], plan["sigma_divergences"]):
        base = [r for r in runs if (r["concept"], r["divergence"], r["target_mode"], r["lr"], r["seed"]) ==
                (concept, label, "anchor", lr0, plan["seeds"][0])]
        median_s = float(np.median(steps_of(base[0])["mean_s"]))
        sigma_jobs += [dict(concept=concept, label=label, target_mode="anchor", lr=lr0, seed=plan["seeds"][0],
                            sigma=math.sqrt(median_s / ratio), ratio=ratio, **common)
                       for ratio in plan["sigma_ratios"]]

    def describe_sigma(i: int, n: int, run: dict) -> dict:
        final = run["evals"][str(plan["steps"])]
        realised = np.median(steps_of(run)["mean_s"]) / run["sigma"] ** 2
        print(f"[sigma {i}/{n}] {run['concept']:>6} {run['divergence']:<14} S/sigma^2 {run['ratio']:g} "
              f"(sigma {run['sigma']:.3g}; median S/sigma^2 in this run {realised:.3g}): "
              f"efficacy {final['efficacy']:.0f}% in-domain {final['in_domain']:+.0f}", flush=True)
        return run

    sigma_runs = run_all(sigma_jobs, args.workers, describe_sigma, args.domain)

    options = "".join(f" --{k} {v}" for k, v in (("domain", args.domain), ("x-source", args.x_source))
                      if v != parser.get_default(k.replace("-", "_")))
    options += f" --concepts {' '.join(args.concepts)}" if args.concepts else ""
    meta = {"mode": args.mode, "plan": plan, "seconds": time.time() - started, "torch": torch.__version__,
            "workers": args.workers, "date": time.strftime("%Y-%m-%d"), "domain": args.domain,
            "x_source": args.x_source,
            "command": f"python benchmarks/erasure_quality.py --mode {args.mode}{options} --workers {args.workers} "
                       f"--out {args.out}"}
    if args.mode == "defaults":  # the anchor ceiling of each concept, for the stop table
        meta["anchor_rates"] = anchor_rates(domain, domain.load_model(), plan["concepts"])
    result = {"meta": meta, "table": aggregate(runs, plan["steps"]), "runs": runs, "sigma_runs": sigma_runs}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    written = write_report(json.loads(json.dumps(result)), args.out)  # the same JSON types as --report reads
    print(f"wrote {args.out / 'results.json'}, " + ", ".join(str(p) for p in written))
    print(f"total {meta['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
