"""Export: diffusers loads the LoRA and predicts like the in-memory erasure; low-rank factors and their errors."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from helpers import CONCEPTS, QUICK, erased_prediction, loaded_prediction, probe
from unlearn_core.adapters.diffusers_sd import DiffusersDenoiser
from unlearn_core.erasure import Erasure, ErasureError
from unlearn_core.export import low_rank, to_diffusers_lora
from unlearn_core.trainer import EraseConfig, erase


@pytest.fixture(scope="module")
def denoiser(tiny_pipe):
    return DiffusersDenoiser.from_pipeline(tiny_pipe)


@pytest.fixture(scope="module")
def full_erasure(denoiser):
    return erase(denoiser, CONCEPTS, EraseConfig(steps=3, learning_rate=1e-3, **QUICK))


def test_full_deltas_load_into_diffusers_and_predict_like_the_erasure(tiny_pipe, denoiser, full_erasure):
    erasure = copy.deepcopy(full_erasure)
    name = erasure.names[0]
    out_dim, in_dim = erasure.shapes[name]
    erasure.full[name] = 0.01 * torch.randn(out_dim, 3) @ torch.randn(3, in_dim)  # rank 3: a rank pattern
    state = to_diffusers_lora(erasure)
    module = "unet." + name[: -len(".weight")]
    assert state[module + ".lora_A.weight"].shape == (3, in_dim)
    assert state[module + ".lora_B.weight"].shape == (out_dim, 3)
    assert len(state) == 2 * len(erasure.names) and all(k.startswith("unet.") for k in state)
    expected = erased_prediction(denoiser, erasure)
    assert not torch.allclose(expected, denoiser(*probe(denoiser)), atol=1e-4), "the erasure changes nothing"
    torch.testing.assert_close(loaded_prediction(tiny_pipe, denoiser, state), expected, rtol=0, atol=1e-5)


def test_lora_erasure_exports_its_factors_with_alpha_folded_in(tiny_pipe, denoiser):
    erasure = erase(denoiser, CONCEPTS, EraseConfig(steps=3, learning_rate=1e-2, lora_rank=2, **QUICK))
    erasure.lora = {n: (up, down, 4.0) for n, (up, down, _) in erasure.lora.items()}  # scale alpha / rank = 2
    state = to_diffusers_lora(erasure)
    name, (up, down, _) = next(iter(erasure.lora.items()))
    module = "unet." + name[: -len(".weight")]
    assert torch.equal(state[module + ".lora_A.weight"], down)
    torch.testing.assert_close(state[module + ".lora_B.weight"], 2 * up)
    expected = erased_prediction(denoiser, erasure)
    torch.testing.assert_close(loaded_prediction(tiny_pipe, denoiser, state), expected, rtol=0, atol=1e-5)


def test_biases_are_refused_by_name_or_skipped_with_a_warning(tiny_pipe, denoiser):
    erasure = erase(denoiser, CONCEPTS, EraseConfig(steps=1, parameter_set="cross_attn", **QUICK))
    with pytest.raises(ErasureError, match=r"linear weights only.*to_out\.0\.bias.*skip_unsupported=True"):
        to_diffusers_lora(erasure)
    with pytest.warns(UserWarning, match=r"left out of the diffusers LoRA.*to_out\.0\.bias"):
        state = to_diffusers_lora(erasure, skip_unsupported=True)
    assert state and not any("bias" in k for k in state)


def test_comfyui_erasure_is_refused_with_what_to_do(full_erasure):
    comfy = Erasure(full=dict(full_erasure.full), shapes=full_erasure.shapes,
                    metadata=replace(full_erasure.metadata, key_format="ldm"))
    with pytest.raises(ErasureError, match="came from ComfyUI.*use its .safetensors file in ComfyUI directly"):
        to_diffusers_lora(comfy)


def test_low_rank_is_exact_at_full_rank_lossy_at_rank_one_and_saves(full_erasure, tmp_path):
    exact, errors = low_rank(full_erasure)
    assert set(errors) == set(full_erasure.names) and not exact.full
    assert max(errors.values()) <= 1e-6, errors
    for name in full_erasure.names:
        torch.testing.assert_close(exact.delta(name), full_erasure.delta(name), rtol=0, atol=1e-6)
    one, errors_one = low_rank(full_erasure, rank=1)
    print(f"max error at numerical rank {max(errors.values()):.2e}; rank-1 errors",
          sorted(round(e, 4) for e in errors_one.values()))
    assert all(up.shape[1] == 1 for up, _, _ in one.lora.values())
    assert all(0 < e < 1 for e in errors_one.values())
    loaded = Erasure.load(one.save(tmp_path / "rank1.safetensors"))
    assert loaded.metadata.low_rank["rank"] == 1
    assert all(torch.equal(loaded.delta(n), one.delta(n)) for n in one.names)
    with pytest.raises(ValueError, match="rank must be at least 1"):
        low_rank(full_erasure, rank=0)
