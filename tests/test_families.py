"""Model variants through the diffusers adapter: SDXL (two text encoders, text-time conditioning),
v-prediction, and negative guidance that erases the target from another prompt (erase_from)."""

from __future__ import annotations

import pytest
import torch

from helpers import QUICK, erased_prediction, loaded_prediction
from unlearn_core.adapters.diffusers_sd import DiffusersDenoiser, before_after_images
from unlearn_core.concepts import parse_concept_text
from unlearn_core.export import to_diffusers_lora
from unlearn_core.report import measure
from unlearn_demo.toy import tiny_pipeline, tiny_sdxl_pipeline
from unlearn_core.trainer import EraseConfig, erase

PAIR = parse_concept_text("a red circle -> a red shape")
SHORT = EraseConfig(steps=10, learning_rate=1e-3, **QUICK)


def moved(denoiser, erasure) -> float:
    """Fraction of the way the target's prediction moved onto the anchor's (the report's measure)."""
    report = measure(denoiser, erasure, PAIR, resolution=64, probes=8)
    print(report.text())
    return report.pairs[0]["moved"]


@pytest.fixture(scope="module")
def sdxl_pipe(tmp_path_factory):
    return tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl"))


def test_sdxl_erasure_moves_the_target_exports_and_generates(sdxl_pipe):
    denoiser = DiffusersDenoiser.from_pipeline(sdxl_pipe)
    assert denoiser.family == "sdxl"
    assert set(denoiser.encode_prompts(["a"], (64, 64))) == {"context", "text_embeds", "time_ids"}
    erasure = erase(denoiser, PAIR, SHORT)
    assert erasure.metadata.family == "sdxl"
    assert moved(denoiser, erasure) > 0.3  # measured: 55%
    expected = erased_prediction(denoiser, erasure)
    actual = loaded_prediction(sdxl_pipe, denoiser, to_diffusers_lora(erasure))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    weights = {n: p.clone() for n, p in sdxl_pipe.unet.named_parameters()}
    (before, after), = before_after_images(sdxl_pipe, erasure, ["a red circle"], steps=1, resolution=16)
    assert before.size == after.size == (16, 16)
    assert all(torch.equal(weights[n], p) for n, p in sdxl_pipe.unet.named_parameters())


def test_v_prediction_erasure_moves_the_target(tmp_path):
    denoiser = DiffusersDenoiser.from_pipeline(tiny_pipeline(tmp_path, prediction_type="v_prediction"))
    erasure = erase(denoiser, PAIR, SHORT)
    assert erasure.metadata.prediction_type == "v_prediction"
    assert moved(denoiser, erasure) > 0.5  # measured: 83%


def test_erase_from_changes_the_frozen_target_of_negative_guidance(tiny_pipe):
    denoiser = DiffusersDenoiser.from_pipeline(tiny_pipe)

    def run(erase_from: str):
        steps = []
        config = EraseConfig(target_mode="negative_guidance", erase_from=erase_from, steps=2, **QUICK)
        erasure = erase(denoiser, PAIR, config, callback=steps.append)
        return [s.mean_s for s in steps if s.phase == "training"], erasure.deltas()

    default, itself, other = run(""), run("a red circle"), run("a blue square")
    assert itself[0] == default[0] and all(torch.equal(itself[1][n], d) for n, d in default[1].items())
    assert other[0][0] != default[0][0], "the first-step S should change with the prompt erased from"
    assert any(not torch.equal(other[1][n], d) for n, d in default[1].items())
