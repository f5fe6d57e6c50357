"""Erasure works on the demo model, as its classifier sees it, with the default recipe (quick: 40 steps, a
handful of images); the Erasure Report calls that erased, the untouched model not, and the default erase_until
stops once the classifier sees the circles gone."""

from __future__ import annotations

import pytest

from helpers import SEEDS, shapes_seen
from unlearn_core.concepts import parse_concept_text
from unlearn_core.injection import DeltaInjection
from unlearn_demo.main_job import demo_prompts
from unlearn_demo.model import DemoDenoiser, DemoModel, load_classifier
from unlearn_core.report import measure
from unlearn_core.trainer import EraseConfig, erase

DEMO = dict(resolution=64, sample_steps=10)  # the 64-pixel demo's sizes; everything else is the default recipe


@pytest.fixture(scope="module")
def demo():
    model = DemoModel.load()
    return model, DemoDenoiser(model), load_classifier()


@pytest.fixture(scope="module")
def circle(demo):
    model, denoiser, _ = demo
    text, targets, keep = demo_prompts("circle", "")
    concepts = parse_concept_text(text)
    return concepts, [t for t, _ in targets], keep, erase(denoiser, concepts, EraseConfig(steps=40, erase_until=0,
                                                                                           **DEMO))


def test_the_default_recipe_erases_circles_and_keeps_the_other_shapes(demo, circle):
    _, targets, keep, erasure = circle
    assert shapes_seen(demo, targets).count("circle") == len(targets) * len(SEEDS)  # the original draws circles
    after = shapes_seen(demo, targets, erasure)
    assert after.count("circle") <= 2, after  # measured: 1 of 8 after 20 and after 60 steps
    kept = shapes_seen(demo, keep, erasure)
    wanted = [p.split()[2] for p in keep] * len(SEEDS)
    # measured: 10 of 12 after 40 steps (the untouched model: 12 of 12); 12 images, so one image is 8 points
    assert sum(k == w for k, w in zip(kept, wanted)) >= 0.75 * len(wanted), list(zip(kept, wanted))


def test_the_report_calls_the_erasure_erased_and_the_untouched_model_not(demo, circle):
    _, denoiser, _ = demo
    concepts, _, _, erasure = circle
    erased = measure(denoiser, erasure, concepts, resolution=64, probes=4)
    untouched = measure(denoiser, erasure, concepts, resolution=64, probes=4, strength=0.0)
    assert min(p["moved"] for p in erased.pairs) >= 0.9, erased.text()
    assert max(abs(p["moved"]) for p in untouched.pairs) < 1e-6, untouched.text()
    assert all(k["drift"] == 0 for k in untouched.keep)


def test_the_defaults_stop_by_the_measure_and_the_demo_draws_no_circles(demo):
    """EraseConfig() untouched: the projection applies, so eta auto 0.5 and erase_until auto 1.1 (every target 10 %
    past its anchor, checked every 10 steps); it stops there, well inside the 400-step cap, with the circles gone and
    the other shapes kept."""
    _, denoiser, _ = demo
    text, targets, keep = demo_prompts("circle", "")
    erasure = erase(denoiser, parse_concept_text(text), EraseConfig(**DEMO))
    stopped = erasure.metadata.stopped
    assert erasure.metadata.stop == "erase_until" and erasure.metadata.config.erase_until == 1.1, stopped
    assert erasure.metadata.history[-1].step <= 200, stopped
    after = shapes_seen(demo, [t for t, _ in targets], erasure)
    assert after.count("circle") <= 1, after
    kept = shapes_seen(demo, keep, erasure)
    wanted = [p.split()[2] for p in keep] * len(SEEDS)
    assert sum(k == w for k, w in zip(kept, wanted)) >= 0.75 * len(wanted), list(zip(kept, wanted))


def test_the_defaults_erase_red_whose_anchor_drops_a_word(demo):
    """The shapes domain's hardest concept ("a red circle -> a circle": the anchor drops the word, and the anchors'
    own images are red 30 % of the time): the defaults still stop by the measure, and red is about as gone as its
    anchors allow (benchmarks/results/defaults_all_domains.md: 69 % gone of a 70 % ceiling; here, with the demo's
    10 sampling steps for the pool, it settles at step 80)."""
    model, denoiser, clf = demo
    text, targets, _ = demo_prompts("red", "")
    targets = [t for t, _ in targets]
    erasure = erase(denoiser, parse_concept_text(text), EraseConfig(**DEMO))
    assert erasure.metadata.stop in ("erase_until", "settled"), erasure.metadata.stopped  # by the measure, not the cap

    def colours(scale: float) -> list[str]:
        with DeltaInjection(denoiser.net, erasure.names, lambda n: scale * erasure.delta(n)):
            images = [model.generate(targets, seed=seed, denoiser=denoiser) for seed in SEEDS]
        return [c for batch in images for c in clf.predict(batch)["color"]]

    before, after = colours(0.0), colours(1.0)
    assert before.count("red") == len(before), before
    assert after.count("red") <= len(after) // 2, after  # measured: 3 of 8
