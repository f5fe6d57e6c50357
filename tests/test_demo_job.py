"""The README's main job, end to end: erase "circle" from the demo model inside a real ComfyUI server."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from helpers import assert_the_demo_thresholds
from unlearn_core.erasure import Erasure
from unlearn_demo.main_job import JobOptions, build_graph, demo_prompts, run

pytestmark = pytest.mark.slow


def test_demo_prompts_cover_target_and_kept_attributes():
    text, targets, keep = demo_prompts("circle", "")
    assert "a red circle -> a red shape" in text and "a circle -> a shape" in text
    assert all("circle" in t for t, _ in targets) and not any("circle" in k for k in keep)
    text, targets, keep = demo_prompts("red", "")
    assert "a red square -> a square" in text and all("red" not in k for k in keep)
    with pytest.raises(ValueError, match="not a demo attribute"):
        demo_prompts("dog", "")


def test_graph_pairs_every_prompt_before_and_after_with_the_same_seed():
    graph = build_graph(JobOptions(), "demo.safetensors", "circle -> shape\n", ["a red circle", "a blue square"])
    for i in range(2):
        before, after = graph[f"before{i}"]["inputs"], graph[f"after{i}"]["inputs"]
        assert before["model"] == ["ckpt", 0] and after["model"] == ["unlearn", 0]
        assert {k: v for k, v in before.items() if k != "model"} == {k: v for k, v in after.items() if k != "model"}


def test_main_job_erases_circle_in_comfyui(tmp_path):
    """Quick settings of the README command; the thresholds are the issue's."""
    out = tmp_path / "demo"
    result = run(JobOptions(), out, workdir=tmp_path)  # measured: 100% -> 0%, kept shapes 100% -> 97%
    s = result["summary"]
    assert_the_demo_thresholds(s)
    report = json.loads((out / "report.json").read_text())
    assert report["summary"] == s and "moved" in report["erasure_report"]
    assert report["stop"] in ("erase_until", "settled"), report["stopped"]  # the measure ended it, not the cap
    assert f"at most {JobOptions().steps} steps: {report['stopped']};" in (out / "report.md").read_text()
    assert "recognised in target images" in (out / "report.md").read_text()
    grid = Image.open(out / "grid.png")
    assert grid.width > 12 * 96 and grid.height > 10 * 96
    saved = Erasure.load(out / "erasure.safetensors").metadata  # the run's own file, readable
    assert (saved.stopped, saved.config.steps) == (report["stopped"], JobOptions().steps)


def test_main_job_with_a_users_checkpoint(tmp_path):
    """--ckpt: any SD1.x file (here the assembled demo checkpoint), free prompts, prediction-space report only."""
    from unlearn_demo.assemble import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "mine.safetensors")
    out = tmp_path / "mine"
    opts = JobOptions(ckpt=str(ckpt), concept="a red circle", anchor="a red shape", prompts=["a red circle"],
                      keep=["a blue square"], steps=10, seeds=2, sample_steps=8)
    result = run(opts, out, workdir=tmp_path)
    assert "summary" not in result and "moved" in result["erasure_report"]
    assert Image.open(out / "grid.png").height > 2 * 96
    assert "# Erasure report" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="--prompt"):
        run(JobOptions(ckpt=str(ckpt), concept="x", anchor="y"), out, workdir=tmp_path)


def test_shipped_demo_workflow_is_the_jobs_graph():
    from pathlib import Path

    from unlearn_demo.main_job import demo_workflow

    path = Path(__file__).resolve().parents[1] / "workflows" / "api" / "demo_erase_circle.json"
    assert json.loads(path.read_text()) == demo_workflow()
