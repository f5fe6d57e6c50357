"""The trainer on a real (tiny) diffusers Stable Diffusion: erasure works, the input stays untouched."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from helpers import CONCEPTS, QUICK, untrained
from unlearn_core.adapters.diffusers_sd import DiffusersDenoiser
from unlearn_core.erasure import Erasure, ErasureError
from unlearn_core.report import measure
from unlearn_core.trainer import EraseConfig, Stop as StopReason, Eraser, ErasureDiverged, divergence_names, erase


@pytest.fixture(scope="module")
def denoiser(tiny_pipe):
    return DiffusersDenoiser.from_pipeline(tiny_pipe)


def test_hellinger_moves_target_onto_anchor_and_keeps_preservation(denoiser):
    before = {n: p.clone() for n, p in denoiser.net.named_parameters()}
    erasure = erase(denoiser, CONCEPTS, EraseConfig(target_mode="anchor", steps=40, learning_rate=3e-3, **QUICK))
    assert all(torch.equal(before[n], p) for n, p in denoiser.net.named_parameters()), "input model modified"
    report = measure(denoiser, erasure, CONCEPTS, resolution=64, probes=8)
    pair = report.pairs[0]
    print(report.text())
    assert pair["after"] < 0.6 * pair["before"], report.text()  # measured: moved 56% in 40 steps
    for keep in report.keep:
        assert keep["drift"] < 0.25, report.text()


@pytest.mark.parametrize("divergence", ["hellinger", "variational_kl"])
def test_same_seed_same_erasure_other_seed_differs(denoiser, divergence):
    """The variational divergences' critic too starts from the seed, whatever the process's RNG state."""
    cfg = EraseConfig(divergence=divergence, steps=3, critic_warmup=2, learning_rate=1e-3, **QUICK)
    a = erase(denoiser, CONCEPTS, cfg)
    torch.manual_seed(12345)  # another process state
    b = erase(denoiser, CONCEPTS, cfg)
    c = erase(denoiser, CONCEPTS, replace(cfg, seed=1))
    assert all(torch.equal(a.delta(n), b.delta(n)) for n in a.names)
    assert any(not torch.equal(a.delta(n), c.delta(n)) for n in a.names)


@pytest.mark.parametrize("divergence", divergence_names())
def test_every_divergence_trains_and_only_the_parameter_set_changes(denoiser, divergence):
    cfg = EraseConfig(divergence=divergence, alpha=0.75, steps=2, critic_warmup=2, learning_rate=1e-3, **QUICK)
    steps = []
    erasure = erase(denoiser, CONCEPTS, cfg, callback=steps.append)
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in erasure.names)
    assert untrained(erasure) == []
    training = [s for s in steps if s.phase == "training"]
    assert [s.step for s in training] == [1, 2] and all(math.isfinite(s.loss) for s in training)
    if divergence.startswith("variational_"):
        assert [s.step for s in steps if s.phase == "critic_warmup"] == [1, 2]


def test_variational_divergence_trains_on_latents_under_8x8(denoiser):
    """32 px (4x4 latents, the nodes' smallest resolution) once failed in the critic's convolutions."""
    cfg = EraseConfig(divergence="variational_kl", steps=1, critic_warmup=1, **dict(QUICK, resolution=32))
    erasure = erase(denoiser, CONCEPTS, cfg)
    assert untrained(erasure) == []


def test_negative_guidance_trajectory_lora(denoiser):
    cfg = EraseConfig(target_mode="negative_guidance", guidance_eta=2.0, x_source="trajectory", lora_rank=2,
                      parameter_set="cross_attn", steps=2, **QUICK)
    erasure = erase(denoiser, CONCEPTS, cfg)
    assert erasure.lora and all(len(erasure.shapes[n]) >= 2 for n in erasure.lora)
    assert all(len(erasure.shapes[n]) == 1 for n in erasure.full)  # biases train as full deltas
    up, down, alpha = next(iter(erasure.lora.values()))
    assert up.shape[1] == 2 and down.shape[0] == 2
    assert any(".attn2.to_q." in n for n in erasure.names)


def test_user_latents_source_and_channel_check(denoiser):
    latents = torch.randn(3, 4, 8, 8)
    erase(denoiser, CONCEPTS, EraseConfig(x_source="latents", steps=1, **QUICK), user_latents=latents)
    with pytest.raises(ValueError, match="channels"):
        erase(denoiser, CONCEPTS, EraseConfig(x_source="latents", steps=1, **QUICK), user_latents=torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="LATENT"):
        erase(denoiser, CONCEPTS, EraseConfig(x_source="latents", steps=1, **QUICK))


def test_divergence_stops_with_clear_error(denoiser):
    cfg = EraseConfig(divergence="mse", sigma=1e-30, max_grad_norm=0, steps=5, **QUICK)  # r = S/sigma^2 overflows
    with pytest.raises(ErasureDiverged, match="lower the learning rate"):
        erase(denoiser, CONCEPTS, cfg)


@pytest.mark.parametrize("field,value,message", [
    ("divergence", "nope", "divergence = 'nope' is not one of"), ("target_mode", "x", "target_mode = 'x' is not one of"),
    ("parameter_set", "x", "parameter_set = 'x' is not one of"), ("resolution", 60, "multiple of 8"),
    ("steps", 0, r"steps = 0 is out of range: 1 \.\. 100000"), ("precision", "fp8", "precision = 'fp8' is not one of"),
])
def test_bad_config_is_a_clear_error(denoiser, field, value, message):
    with pytest.raises(ValueError, match=message):
        erase(denoiser, CONCEPTS, EraseConfig(**{**QUICK, field: value}))


def test_cancel_from_callback_stops_the_run(denoiser):
    class Stop(Exception):
        pass

    def cb(info):
        if info.phase == "training" and info.step == 2:
            raise Stop

    with pytest.raises(Stop):
        erase(denoiser, CONCEPTS, EraseConfig(steps=50, **QUICK), callback=cb)


def test_save_load_roundtrip_atomic_and_safetensors_only(denoiser, tmp_path):
    erasure = erase(denoiser, CONCEPTS, EraseConfig(steps=1, **QUICK))
    path = erasure.save(tmp_path / "e.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]
    loaded = Erasure.load(path)
    assert sorted(loaded.names) == sorted(erasure.names)
    assert all(torch.equal(loaded.delta(n), erasure.delta(n)) for n in erasure.names)
    assert loaded.metadata.fingerprint == erasure.metadata.fingerprint
    assert loaded.metadata.concepts == CONCEPTS.to_dict()
    (tmp_path / "x.ckpt").write_bytes(b"not a pickle we would ever load")
    with pytest.raises(ErasureError, match="safetensors"):
        Erasure.load(tmp_path / "x.ckpt")
    with pytest.raises(ErasureError, match="safetensors"):
        erasure.save(tmp_path / "e.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ErasureError, match="not a readable"):
        Erasure.load(tmp_path / "broken.safetensors")


def test_check_against_names_both_families(denoiser):
    erasure = erase(denoiser, CONCEPTS, EraseConfig(steps=1, **QUICK))
    shapes = {n: tuple(p.shape) for n, p in denoiser.net.named_parameters()}
    erasure.check_against(shapes, "sd1")
    name = erasure.names[0]
    with pytest.raises(ErasureError, match=r"made for a .* model and does not fit this SDXL model"):
        erasure.check_against({**shapes, name: (1, 1)}, "SDXL")


def test_gradient_checkpointing_recomputes_blocks_and_gives_the_same_erasure(denoiser):
    calls = []
    block = denoiser.net.get_submodule(denoiser.checkpoint_blocks()[0])
    # the recompute calls the block's own forward (no hooks of its own), so count a layer inside it
    inner = next(m for m in block.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    hook = inner.register_forward_hook(lambda *a: calls.append(1))
    try:
        plain = erase(denoiser, CONCEPTS, EraseConfig(steps=2, **QUICK))
        plain_calls = len(calls)
        calls.clear()
        ckpt = erase(denoiser, CONCEPTS, EraseConfig(steps=2, gradient_checkpointing=True, **QUICK))
    finally:
        hook.remove()
    assert len(calls) > plain_calls, "no block was recomputed during backward"
    assert all(torch.allclose(plain.delta(n), ckpt.delta(n), atol=1e-7) for n in plain.names)
    assert not any(hasattr(m, "forward") and "forward" in vars(m) for m in denoiser.net.modules())


def test_full_parameter_set_trains_every_tensor_and_restores_the_network(denoiser):
    before = {n: p for n, p in denoiser.net.named_parameters()}
    erasure = erase(denoiser, CONCEPTS, EraseConfig(parameter_set="full", steps=1, **QUICK))
    after = dict(denoiser.net.named_parameters())
    assert set(erasure.names) == set(before)
    assert all(after[n] is before[n] for n in before), "a parameter object was replaced"


def test_target_modes_combine_the_frozen_outputs_as_documented():
    from unlearn_core.targets import TARGET_MODES

    anchor, target, uncond = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([0.5])
    assert TARGET_MODES["anchor"].combine([anchor], 2.0) == anchor
    assert TARGET_MODES["negative_guidance"].combine([anchor, target, uncond], 2.0) == anchor - 2.0 * (target - uncond)
    # anchor_guidance: the anchor, pushed away from what distinguishes the target from it
    assert TARGET_MODES["anchor_guidance"].combine([anchor, target], 2.0) == anchor - 2.0 * (target - anchor)
    assert TARGET_MODES["anchor_guidance"].combine([anchor, target], 0.0) == anchor


def test_anchor_guidance_trains(denoiser):
    erasure = erase(denoiser, CONCEPTS, EraseConfig(target_mode="anchor_guidance", steps=2, **QUICK))
    assert untrained(erasure) == []


def test_fp16_loss_scaling_unscales_before_clipping_and_logging(denoiser, monkeypatch):
    # fp16 autocast needs CUDA; here the same GradScaler path is forced on for a CPU fp32 run. The scale
    # (2^16) must be removed before clipping and logging: the run must match the unscaled one.
    cfg = EraseConfig(steps=3, learning_rate=1e-3, max_grad_norm=1e6, log_every=1, **QUICK)
    logged = {"plain": [], "scaled": []}
    plain = erase(denoiser, CONCEPTS, cfg, callback=lambda i: logged["plain"].append(i.grad_norm))
    monkeypatch.setattr(Eraser, "_grad_scaler", lambda self: torch.amp.GradScaler("cpu", init_scale=2.0**16))
    scaled = erase(denoiser, CONCEPTS, cfg, callback=lambda i: logged["scaled"].append(i.grad_norm))
    plain_norms, scaled_norms = ([g for g in logged[k] if not math.isnan(g)] for k in ("plain", "scaled"))
    assert len(scaled_norms) == 3 and scaled_norms == pytest.approx(plain_norms, rel=1e-4)
    assert all(torch.allclose(plain.delta(n), scaled.delta(n), rtol=1e-4, atol=1e-8) for n in plain.names)


def test_sigma_auto_calibrates_on_the_first_batches_and_is_recorded(denoiser):
    steps = []
    erasure = erase(denoiser, CONCEPTS, EraseConfig(sigma=0, steps=3, learning_rate=1e-3, **QUICK),
                    callback=steps.append)
    sigma = erasure.metadata.config.sigma
    training = [s for s in steps if s.phase == "training"]
    assert erasure.metadata.sigma_auto and sigma > 0 and all(s.sigma == sigma for s in training)
    first = training[0]
    assert 0.2 < first.ratio < 5, f"r = S/sigma² = {first.ratio:.3g} at the start; sigma² = median S should give ~1"
    fixed = erase(denoiser, CONCEPTS, EraseConfig(sigma=0.5, steps=1, **QUICK))
    assert fixed.metadata.config.sigma == 0.5 and not fixed.metadata.sigma_auto


def test_erase_until_stops_once_the_probes_have_moved_and_says_why(denoiser):
    checks = []
    config = EraseConfig(**{**QUICK, "erase_until": 0.3}, target_mode="anchor", steps=200, learning_rate=3e-3,
                         check_every=5)
    erasure = erase(denoiser, CONCEPTS, config, callback=checks.append)
    measured = [c for c in checks if math.isfinite(c.moved)]
    last = erasure.metadata.history[-1]
    assert [c.step for c in measured] == list(range(5, last.step + 1, 5)) and last.step < 200
    assert measured[-1].moved >= 0.3 > max(c.moved for c in measured[:-1])
    assert [c.progress for c in measured] == [c.moved for c in measured]  # anchor mode aims at the anchor itself
    assert erasure.metadata.stopped == (f"erase_until 30% reached at step {last.step} "
                                           f"(every target moved at least {last.moved:.0%} onto its anchor)")
    fresh = measure(denoiser, erasure, CONCEPTS, resolution=64, probes=4, seed=7)  # other probes agree
    assert fresh.pairs[0]["moved"] > 0.15, fresh.text()
    # the same run checked only at its last step: reached there, and said once
    again = erase(denoiser, CONCEPTS, replace(config, steps=last.step, check_every=last.step))
    assert again.metadata.stopped == erasure.metadata.stopped


def test_erase_until_reads_moved_for_the_anchor_modes_and_progress_for_negative_guidance(denoiser):
    """anchor_guidance aims at a + eta (a - c), 1 + eta times as far as the anchor (its progress = moved / (1 + eta)),
    but erase_until compares how far the target moved onto the anchor; negative_guidance has no anchor to land on,
    so there it compares the progress towards its own guided prediction."""
    checks = []
    config = EraseConfig(**{**QUICK, "erase_until": 0.3}, target_mode="anchor_guidance", guidance_eta=1.5,
                         steps=200, learning_rate=3e-3, check_every=5)
    erasure = erase(denoiser, CONCEPTS, config, callback=checks.append)
    measured = [c for c in checks if math.isfinite(c.progress)]
    assert all(c.progress == pytest.approx(c.moved / 2.5, rel=1e-4, abs=1e-6) for c in measured)
    assert all(c.erased == c.moved for c in measured)
    assert measured[-1].moved >= 0.3 > max(c.moved for c in measured[:-1]) and measured[-1].progress < 0.3
    assert erasure.metadata.stopped == (f"erase_until 30% reached at step {measured[-1].step} "
                                           f"(every target moved at least {measured[-1].moved:.0%} onto its anchor)")
    report = measure(denoiser, erasure, CONCEPTS, resolution=64, probes=4, seed=7)  # the Erasure Report too
    assert report.pairs[0]["progress"] == pytest.approx(report.pairs[0]["moved"] / 2.5, rel=1e-4)
    assert "of the way to its target mode's aim" in report.text()

    config = EraseConfig(**{**QUICK, "erase_until": 5.0}, target_mode="negative_guidance", steps=10,
                         learning_rate=3e-3, check_every=5)
    ng = []
    erasure = erase(denoiser, CONCEPTS, config, callback=lambda c: ng.append(c) if math.isfinite(c.progress) else 0)
    assert [c.step for c in ng] == [5, 10] and all(c.erased == c.progress for c in ng)
    assert ng[-1].progress != pytest.approx(ng[-1].moved)  # measured against its own aim, not the anchor
    assert erasure.metadata.stop == StopReason.CAP  # erase_until was set and not reached: a warning, not success
    assert erasure.metadata.stopped == (
        "WARNING: erase_until 500% not reached in 10 steps (every target at least {:.0%} of the way to the "
        "negative_guidance aim): the targets may not be erased; raise steps".format(erasure.metadata.history[-1].progress))


def test_keep_drift_limit_returns_the_best_state_seen(denoiser):
    config = EraseConfig(**{**QUICK, "max_keep_drift": 1e-9}, steps=20, learning_rate=3e-3, check_every=5)
    erasure = erase(denoiser, CONCEPTS, config)
    assert erasure.metadata.stopped.startswith("keep drift") and "returned the state of step 0" in \
        erasure.metadata.stopped
    assert all(erasure.delta(n).abs().sum() == 0 for n in erasure.names)  # step 0: nothing erased yet
