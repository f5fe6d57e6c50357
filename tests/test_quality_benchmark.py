"""The erasure-quality benchmark (issue 7): its statistics, and its quick mode end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import ROOT, SCRIPT, _bench


def test_kid_is_zero_for_one_distribution_and_grows_with_a_shift():
    bench = _bench()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 16, generator=gen), torch.randn(200, 16, generator=gen)
    same = bench.kid(x, y)
    shifted = bench.kid(x, y + 1.0)
    assert abs(same) < 0.05 and shifted > 20 * max(abs(same), 1e-3)


def test_interval_matches_the_t_distribution():
    bench = _bench()
    mean, half = bench.interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and abs(half - 4.303 * 1.0 / 3 ** 0.5) < 1e-9
    assert bench.interval([5.0])[0] == 5.0


def test_matched_efficacy_interpolates_the_first_crossing_of_the_mean_curve():
    bench = _bench()

    def run(before_shows, curve):  # curve: step -> (efficacy, in_domain)
        evals = {str(s): {"efficacy": e, "in_domain": d, "cross_domain": 0.0, "kid_x1000": 2 * -d}
                 for s, (e, d) in curve.items()}
        return {"divergence": "hellinger", "target_mode": "anchor", "lr": 1e-3, "evals": evals,
                "before": {"target_shows": before_shows}}

    runs = [run(100, {10: (40, -4), 20: (80, -8)}), run(80, {10: (60, -6), 20: (100, -12)})]
    row, = bench.matched_efficacy(runs, (10, 20), levels=(5, 30, 75, 95))
    assert row["n"] == 2 and row[95] is None  # the mean curve peaks at 90 %
    assert row[5] == [0.0, 0.0, 0.0, 0.0]  # the original model is already at 10 %
    assert row[30] == pytest.approx([5.0, -2.5, 0.0, 5.0])  # halfway from step 0 (10 %) to step 10 (50 %, -5)
    assert row[75] == pytest.approx([16.25, -8.125, 0.0, 16.25])  # 5/8 of the way from step 10 to step 20


@pytest.mark.slow
def test_quick_mode_runs_and_erases(tmp_path):
    out = tmp_path / "quality"
    # two worker processes, as the full run uses
    subprocess.run([sys.executable, str(SCRIPT), "--mode", "quick", "--workers", "2", "--out", str(out)],
                   check=True, cwd=ROOT, timeout=600)
    result = json.loads((out / "results.json").read_text())
    assert {p.name for p in out.glob("*.png")} == {"efficacy_vs_preservation.png", "training_dynamics.png",
                                                   "sigma_sweep.png"}
    report = (out / "table.md").read_text()
    assert "hellinger" in report and "matched efficacy" in report and "Sigma sweep" in report
    for run in result["runs"]:
        before = 100 - run["before"]["target_shows"]
        final = run["evals"][str(result["meta"]["plan"]["steps"])]
        assert final["efficacy"] >= before + 20, (run["divergence"], before, final)  # measured: +25 to +75
        assert run["history"]["step"] == list(range(1, result["meta"]["plan"]["steps"] + 1))
        assert all(len(column) == len(run["history"]["step"]) for column in run["history"].values())
    sigma_run, = result["sigma_runs"]
    base, = [r for r in result["runs"] if r["divergence"] == "hellinger"]
    median_s = float(np.median(base["history"]["mean_s"]))  # sigma is set so that S / sigma^2 = 10
    assert sigma_run["ratio"] == 10.0 and sigma_run["sigma"] == pytest.approx((median_s / 10) ** 0.5)


def test_kept_images_clearly_drawn_and_lost_are_counted_per_image():
    """The untouched model loses no clearly drawn kept image; both demo domains draw their kept prompts clearly
    (README, "A second domain": what makes their in-domain numbers evidence; the first pattern model drew 12-30 %)."""
    bench = _bench()
    shapes, patterns = bench.DOMAINS["shapes"], bench.DOMAINS["patterns"]
    model = shapes.load_model()
    probe = bench.Probe(shapes, model, shapes.make_denoiser(model), "circle", seeds=2)
    score = probe.score()
    assert probe.reference["kept_clear"].mean() >= 0.9
    assert score["clear_kept_lost"] == 0 and score["in_domain"] == 0 and score["efficacy"] == 0
    per_prompt = bench.kept_confidence(shapes, model, "circle", seeds=2)
    assert list(per_prompt) == probe.keep and np.mean(list(per_prompt.values())) >= 90  # README: 98 % with 8 seeds
    assert np.mean(list(per_prompt.values())) == pytest.approx(100 * probe.reference["kept_clear"].mean())
    confidence = bench.kept_confidence(patterns, patterns.load_model(), "checks", seeds=2)
    assert confidence["small dots"] == 100 and np.mean(list(confidence.values())) >= 80, confidence  # 94 % (8 seeds)
