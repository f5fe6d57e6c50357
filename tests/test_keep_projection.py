"""keep_projection: the updates of the weights that read the text leave the keep prompts' text rows unchanged, so
the keep prompts predict exactly as before while the target is erased (README, "Keep projection")."""

from __future__ import annotations

import pytest
import torch

from unlearn_core.concepts import parse_concept_text
from unlearn_core.injection import DeltaInjection
from unlearn_core.keep_projection import keep_basis, outside_share, project_off_
from unlearn_core.metadata import Projection
from unlearn_core.parameters import WeightDeltas
from unlearn_core.trainer import EraseConfig, erase
from unlearn_demo.flow_model import FlowDemoDenoiser, FlowDemoModel
from unlearn_demo.main_job import demo_prompts
from unlearn_demo.pattern_model import RESOLUTION, PatternDenoiser, PatternModel, pattern_prompts


def test_the_basis_spans_the_rows_and_the_projection_removes_them():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 16, generator=gen) @ torch.randn(16, 16, generator=gen)  # rank 3 in 16 dimensions
    rows = torch.cat([rows, rows[:1] + rows[1:2]])  # a dependent row adds no direction
    basis = keep_basis(rows)
    assert basis.shape == (16, 3) and torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    assert outside_share(rows, basis).max() < 1e-5
    other = torch.randn(2, 16, generator=gen)
    other -= other @ basis @ basis.T  # orthogonal to the rows
    assert torch.allclose(outside_share(other, basis), torch.ones(2), atol=1e-5)
    weight = torch.randn(5, 16, generator=gen)
    project_off_(weight, basis)
    assert (weight @ rows.T).abs().max() < 1e-4 and (weight @ other.T).abs().max() > 0.1


def test_lora_updates_are_projected_through_their_down_matrix():
    gen = torch.Generator().manual_seed(1)
    deltas = WeightDeltas({"w": torch.zeros(6, 16), "b": torch.zeros(6)}, rank=2, generator=gen)
    with torch.no_grad():
        deltas.up["0"].normal_(generator=gen)
    basis = keep_basis(torch.randn(4, 16, generator=gen))
    deltas.project_inputs_(["w"], basis)
    assert (deltas.delta_of("w") @ basis).abs().max() < 1e-5 and deltas.delta_of("w").abs().max() > 0


def _predictions(denoiser, prompts, erasure=None):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(len(prompts), denoiser.latent_channels, 8, 8, generator=gen)
    t = torch.tensor([150, 400, 700, 900] * len(prompts))[: len(prompts)]
    cond = denoiser.encode_prompts(prompts, (RESOLUTION, RESOLUTION))
    with torch.no_grad():
        if erasure is None:
            return denoiser(x, t, cond)
        with DeltaInjection(denoiser.net, erasure.names, erasure.delta):
            return denoiser(x, t, cond)


@pytest.fixture(scope="module")
def patterns():
    return PatternDenoiser(PatternModel.load())


def test_keep_prompts_predict_exactly_as_before_and_the_target_moves(patterns):
    text, targets, keep = pattern_prompts("dots")
    held_out = ["checks", "stripes"]  # not in the keep list; the demo's word rows do not mix words, so kept too
    before = _predictions(patterns, keep + held_out + [targets[0][0]])
    assert EraseConfig().keep_projection  # on by default
    on = erase(patterns, parse_concept_text(text), EraseConfig(resolution=RESOLUTION, steps=10, erase_until=0))
    after = _predictions(patterns, keep + held_out + [targets[0][0]], on)
    assert (after[:-1] - before[:-1]).abs().max() < 1e-4  # every keep prompt, at every x_t and t
    assert (after[-1] - before[-1]).abs().max() > 1e-2  # "small dots" changed
    projected = on.metadata.keep_projection
    assert (projected.status, projected.tensors, projected.keep_directions, projected.text_directions) == \
        (Projection.APPLIED, 8, 8, 768)
    off = erase(patterns, parse_concept_text(text),
                EraseConfig(resolution=RESOLUTION, steps=10, erase_until=0, keep_projection=False))
    assert (_predictions(patterns, keep, off) - before[: len(keep)]).abs().max() > 1e-3
    assert off.metadata.keep_projection.status == Projection.OFF
    # guidance_eta auto: 0.5 where the projection is applied (its target words would overshoot at 1), else ESD's 1
    assert (on.metadata.config.guidance_eta, off.metadata.config.guidance_eta) == (0.5, 1.0)


def test_a_target_whose_words_are_all_kept_falls_back_to_the_keep_loss_and_says_so(patterns):
    """Every word of "small dots" is in a keep prompt: the projection would leave nothing to train."""
    concepts = parse_concept_text("small dots -> a small pattern\nkeep: large dots\nkeep: small checks\n")
    erasure = erase(patterns, concepts, EraseConfig(resolution=RESOLUTION, steps=2, erase_until=0, keep_projection=True))
    fell_back = erasure.metadata.keep_projection
    assert fell_back.status == Projection.FELL_BACK and fell_back.keep_directions == 6
    assert fell_back.target_shares[0] < 0.005 and "'small dots'" in fell_back.note  # the note names the target
    assert max(erasure.delta(n).abs().max().item() for n in erasure.names) > 0  # it trained, with the keep loss


def test_where_no_trained_weight_reads_the_text_it_says_so_and_with_flux_txt_in_it_projects():
    """Flux's default set (the text stream's qkv) reads hidden states, not the text; its txt_in does (a LoRA)."""
    denoiser = FlowDemoDenoiser(FlowDemoModel.load())
    text, _, keep = demo_prompts("circle", "")
    config = dict(resolution=64, sample_steps=2, steps=3, erase_until=0, keep_projection=True)
    kv = erase(denoiser, parse_concept_text(text), EraseConfig(**config))
    assert kv.metadata.keep_projection.status == Projection.NOT_APPLICABLE
    before = _predictions(denoiser, keep)
    txt_in = erase(denoiser, parse_concept_text(text), EraseConfig(parameter_set="context_embedder", **config))
    assert txt_in.lora and (_predictions(denoiser, keep, txt_in) - before).abs().max() < 1e-4
