"""The flow demo model (a rectified-flow transformer in Flux's layout, trained on the demo's shapes): the engine
sees a Flux network, its samples show the prompted shapes, and the default recipe erases circles from it to the SD
demo's bounds at the main job's --family flux steps (README, "A flow-matching demo model")."""

from __future__ import annotations

import pytest
import torch

from helpers import SEEDS, shapes_seen
from unlearn_core.architectures import architecture_of
from unlearn_core.concepts import parse_concept_text
from unlearn_core.erasure import Erasure
from unlearn_core.report import measure
from unlearn_demo.flow_model import FLOW_WEIGHTS, FlowDemoDenoiser, FlowDemoModel, flow_sigmas
from unlearn_demo.main_job import demo_prompts
from unlearn_demo.model import load_classifier
from unlearn_core.parameters import select_parameters
from unlearn_core.schedule import abar_from_flow_sigma, flow_coordinates
from unlearn_core.trainer import EraseConfig, erase

FLOW_DEMO = dict(resolution=64, sample_steps=10)  # the SD demo's sizes; everything else is the default recipe


@pytest.fixture(scope="module")
def flow():
    model = FlowDemoModel.load()
    return model, FlowDemoDenoiser(model), load_classifier()


def test_the_engine_sees_a_small_flux_network(flow):
    model, denoiser, _ = flow
    names = [n for n, _ in denoiser.net.named_parameters()]
    assert architecture_of(names).name == "flux" == denoiser.architecture and denoiser.prediction_type == "flow"
    depth = len(denoiser.net.double_blocks)
    assert select_parameters(denoiser.net, "cross_attn_kv", "flux") == [
        f"double_blocks.{i}.txt_attn.qkv.weight" for i in range(depth)]
    assert select_parameters(denoiser.net, "context_embedder", "flux") == ["txt_in.weight", "txt_in.bias"]
    assert denoiser.checkpoint_blocks()[0] == "double_blocks.0" and len(denoiser.net.single_blocks) >= 1
    assert sum(f.stat().st_size for f in FLOW_WEIGHTS.glob("*.safetensors")) < 8_000_000


def test_the_schedule_is_the_rectified_flow_grid_in_ddpm_coordinates(flow):
    _, denoiser, _ = flow
    s = flow_sigmas()
    assert s[0] == pytest.approx(1e-3) and s[-1] == 1.0
    assert torch.allclose(denoiser.alphas_cumprod, abar_from_flow_sigma(s))
    assert torch.allclose(flow_coordinates(denoiser.alphas_cumprod)[0], s, atol=1e-5)  # the engine recovers s


def test_samples_show_the_prompted_shape(flow):
    prompts = ["a red circle", "a blue circle", "a green square", "a yellow triangle", "a red cross"]
    seen = shapes_seen(flow, prompts)
    wanted = [p.split()[2] for p in prompts] * len(SEEDS)
    assert sum(s == w for s, w in zip(seen, wanted)) >= 0.8 * len(wanted), list(zip(seen, wanted))


def test_full_updates_move_the_circle_prompts_onto_their_anchors_and_keep_the_rest(flow):
    """Prediction space (the Erasure Report's measure): fails if erasure stops working on a flow model."""
    _, denoiser, _ = flow
    text, _, _ = demo_prompts("circle", "")
    concepts = parse_concept_text(text)
    erasure = erase(denoiser, concepts, EraseConfig(steps=20, lora_rank=0, **FLOW_DEMO))
    report = measure(denoiser, erasure, concepts, resolution=64, probes=4)
    assert min(p["moved"] for p in report.pairs) >= 0.3, report.text()  # measured: 42-58 %
    assert max(k["drift"] for k in report.keep) <= 0.05, report.text()  # measured: at most 0.7 %
    untouched = measure(denoiser, Erasure(), concepts, resolution=64, probes=2)
    assert max(abs(p["moved"]) for p in untouched.pairs) < 1e-6


@pytest.mark.slow  # about a minute on the shared cores
def test_the_defaults_erase_circles_and_keep_the_other_shapes_and_stop_by_the_measure(flow):
    """EraseConfig() untouched: no projection here (the default set reads no text), so eta 1 and erase_until auto 1.2,
    where this model's images flip (at moved 75-84 % most keep their circles); the SD demo's bounds."""
    _, denoiser, _ = flow
    text, targets, keep = demo_prompts("circle", "")
    targets = [t for t, _ in targets]
    before = shapes_seen(flow, targets).count("circle")
    erasure = erase(denoiser, parse_concept_text(text), EraseConfig(**FLOW_DEMO))
    assert erasure.metadata.stop == "erase_until" and erasure.metadata.config.erase_until == 1.2
    after = shapes_seen(flow, targets, erasure)
    assert before >= len(targets) * len(SEEDS) - 1, before  # the original draws circles
    assert after.count("circle") <= 2, after  # the SD demo's bound (8 images)
    kept = shapes_seen(flow, keep, erasure)
    wanted = [p.split()[2] for p in keep] * len(SEEDS)
    assert sum(k == w for k, w in zip(kept, wanted)) >= 0.75 * len(wanted), list(zip(kept, wanted))
