"""The attacks on an erasure (unlearn_core.attacks) on the demo model, read by its classifier: they must find
the concept where it is there to find, and bring a plain erasure's target back."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from helpers import CONCEPTS, QUICK
from unlearn_core.attacks import LEARNT_WORD, AttackConfig, initial_word, probe, with_learnt_word
from unlearn_core.concepts import parse_concept_text
from unlearn_core.erasure import Erasure
from unlearn_core.metadata import ErasureMetadata
from unlearn_core.trainer import EraseConfig, erase
from unlearn_demo.domains import DOMAINS

SHAPES = DOMAINS["shapes"]
ATTACK = dict(steps=150, images=16, resolution=64, sample_steps=10)


@pytest.fixture(scope="module")
def demo():
    model = SHAPES.load_model()
    text, _, _ = SHAPES.prompts("circle")
    return model, SHAPES.make_denoiser(model), parse_concept_text(text)


def circles(model, latents: torch.Tensor) -> float:
    """Share of the images the classifier reads as circles."""
    shapes = SHAPES.load_classifier().predict(model.decode(latents))["shape"]
    return sum(s == "circle" for s in shapes) / len(shapes)


def no_erasure(denoiser) -> Erasure:
    """An erasure that changes nothing: the attack then runs on the original model."""
    name = next(n for n, _ in denoiser.net.named_parameters() if ".attn2.to_k." in n)
    weight = dict(denoiser.net.named_parameters())[name]
    return Erasure(full={name: torch.zeros_like(weight)}, shapes={name: tuple(weight.shape)},
                   metadata=ErasureMetadata(family="sd1", key_format="ldm"))


def test_the_learnt_word_takes_the_place_of_the_targets_own_words():
    assert with_learnt_word("a red circle", "a red shape") == f"a red {LEARNT_WORD}"
    assert with_learnt_word("a red circle", "a circle") == f"a {LEARNT_WORD} circle"
    assert with_learnt_word("a painting by Van Gogh", "a painting") == f"a painting {LEARNT_WORD}"
    assert initial_word([("a red circle", "a red shape")]) == "shape"
    assert initial_word([("a red circle", "a circle")]) == "red"


def test_textual_inversion_finds_the_concept_on_an_unerased_model(demo):
    """From the word 'shape', on the original model, the learnt word draws circles: the attack works."""
    model, denoiser, concepts = demo
    start = probe(denoiser, no_erasure(denoiser), concepts, AttackConfig(attack="textual_inversion", steps=1,
                                                                        images=4, resolution=64, sample_steps=10))
    learnt = probe(denoiser, no_erasure(denoiser), concepts, AttackConfig(attack="textual_inversion", **ATTACK))
    assert circles(model, start.latents["attacked"]) <= 0.4  # 'a red shape' draws other shapes too
    assert circles(model, learnt.latents["attacked"]) >= 0.8
    assert learnt.losses[-10:] < learnt.losses[:10]


@pytest.mark.parametrize("attack", ["textual_inversion", "soft_prompt"])
def test_the_attacks_bring_a_plain_erasure_back(demo, attack):
    """The plain mode's erasure unlinks the word: both attacks restore the circles, and the report says so."""
    model, denoiser, concepts = demo
    erasure = erase(denoiser, concepts, EraseConfig(resolution=64))
    result = probe(denoiser, erasure, concepts, AttackConfig(attack=attack, **ATTACK))
    assert circles(model, result.latents["original"]) >= 0.8
    assert circles(model, result.latents["erased"]) <= 0.2
    assert circles(model, result.latents["attacked"]) >= 0.6
    assert min(p["moved"] for p in result.before.pairs) >= 1.0
    assert max(result.restored()) >= 0.5 and "brings the target back" in result.text()


def test_probe_leaves_the_model_unchanged(demo):
    _, denoiser, concepts = demo
    before = {n: p.clone() for n, p in denoiser.net.named_parameters()}
    probe(denoiser, no_erasure(denoiser), concepts, AttackConfig(steps=2, images=2, resolution=64, sample_steps=2))
    assert all(torch.equal(before[n], p) for n, p in denoiser.net.named_parameters())


def test_textual_inversion_through_a_diffusers_clip_text_encoder(tiny_pipe):
    """The learnt word's slot holds the vector: with a known word's own embedding it encodes as that word does,
    and the attack learns through the CLIP text encoder (ComfyUI's CLIP is refused: test_comfy_inprocess)."""
    from unlearn_core.adapters.diffusers_sd import DiffusersDenoiser

    denoiser = DiffusersDenoiser.from_pipeline(tiny_pipe)
    same = denoiser.encode_with_word([f"red {LEARNT_WORD}"], LEARNT_WORD, denoiser.word_embedding("a"), (32, 32))
    assert torch.allclose(same["context"], denoiser.encode_prompts(["red a"], (32, 32))["context"], atol=1e-5)
    erasure = erase(denoiser, CONCEPTS, EraseConfig(steps=1, **QUICK))
    result = probe(denoiser, erasure, CONCEPTS, AttackConfig(attack="textual_inversion", steps=20, images=2,
                                                             resolution=32, sample_steps=1, learning_rate=5e-2))
    assert result.prompts == [f"a red {LEARNT_WORD}"] and sum(result.losses[-5:]) < sum(result.losses[:5])


def test_bad_attack_settings_are_refused_by_name(demo):
    _, denoiser, concepts = demo
    with pytest.raises(ValueError, match="steps = 0 is out of range"):
        probe(denoiser, no_erasure(denoiser), concepts, AttackConfig(steps=0))
    with pytest.raises(ValueError, match="attack = 'pgd' is not one of"):
        probe(denoiser, no_erasure(denoiser), concepts, AttackConfig(attack="pgd"))


def test_probe_cli_on_a_pipeline_folder(tiny_pipe, tmp_path):
    from unlearn_core.adapters.diffusers_sd import DiffusersDenoiser

    erasure = erase(DiffusersDenoiser.from_pipeline(tiny_pipe), CONCEPTS, EraseConfig(steps=2, **QUICK))
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    erasure.save(tmp_path / "e.safetensors")
    out = subprocess.run([sys.executable, "-m", "unlearn_core", "probe", "--pipeline", str(tmp_path / "pipe"),
                          "--erasure", str(tmp_path / "e.safetensors"), "--concepts", "a red circle -> a red shape",
                          "--steps", "3", "--images", "2", "--batch-size", "2", "--resolution", "32",
                          "--sample-steps", "2", "--out", str(tmp_path / "grid.png"),
                          "--report-json", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "restored" in out.stdout and (tmp_path / "grid.png").is_file() and (tmp_path / "r.json").is_file()


def test_adversarial_mode_runs_its_steps_and_says_which_mode_ran(demo):
    _, denoiser, concepts = demo
    erasure = erase(denoiser, concepts, EraseConfig(erase_mode="adversarial", parameter_set="non_cross_attn",
                                                    steps=4, check_every=2, resolution=64, num_samples=4,
                                                    sample_steps=4))
    meta = erasure.metadata
    assert meta.config.erase_mode == "adversarial" and meta.stop == "steps"
    assert meta.stopped.startswith("ran all 4 steps") and "the adversary's" in meta.stopped
    assert "WARNING" not in meta.stopped
    kv = erase(denoiser, concepts, EraseConfig(erase_mode="adversarial", steps=2, check_every=2, resolution=64,
                                               num_samples=4, sample_steps=4))
    assert "WARNING: erase_mode adversarial trained only the weights that read the text" in kv.metadata.stopped


@pytest.mark.slow
def test_adversarial_mode_resists_textual_inversion(demo):
    """erase_mode adversarial on the visual pathway: the held-out attack (another seed and initial word, more steps)
    brings few circles back, where it brings the plain erasure's back (test above)."""
    model, denoiser, concepts = demo
    erasure = erase(denoiser, concepts, EraseConfig(erase_mode="adversarial", parameter_set="non_cross_attn",
                                                    resolution=64))
    result = probe(denoiser, erasure, concepts, AttackConfig(attack="textual_inversion", steps=300, seed=1,
                                                             init_word="square", resolution=64, sample_steps=10,
                                                             preview_per_prompt=4))
    assert circles(model, result.latents["original"]) >= 0.8
    assert circles(model, result.latents["attacked"]) <= 0.25


def test_report_and_probe_run_on_an_erasure_of_every_parameter(demo):
    """parameter_set full injects every tensor of the network: the device and dtype are still known."""
    from unlearn_core.report import measure

    _, denoiser, concepts = demo
    erasure = erase(denoiser, concepts, EraseConfig(parameter_set="full", steps=1, **QUICK))
    assert len(measure(denoiser, erasure, concepts, resolution=64, probes=1).pairs) == len(concepts.prompt_pairs())
    result = probe(denoiser, erasure, concepts, AttackConfig(steps=1, images=2, resolution=64, sample_steps=2))
    assert len(result.restored()) == len(concepts.prompt_pairs())
