"""The shipped demo model: its checkpoint loads in the host's stock loaders and computes what the slim parts do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unlearn_demo.assemble import checkpoint_state_dict, write_checkpoint
from unlearn_demo.model import WEIGHTS, DemoModel, load_classifier
from unlearn_demo.shapes import ATTRIBUTES, batch


@pytest.fixture(scope="module")
def demo() -> DemoModel:
    return DemoModel.load()


@pytest.fixture(scope="module")
def loaded(comfy, comfy_root):
    """(MODEL, CLIP, VAE) from ComfyUI's stock checkpoint loader on the assembled demo checkpoint."""
    import comfy.sd

    path = write_checkpoint(comfy_root / "models" / "checkpoints")
    with torch.inference_mode():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
    return model, clip, vae


def test_captions_use_superclass_words_and_single_clip_tokens():
    from unlearn_demo.shapes import Attributes, caption
    from unlearn_demo.train import clip_token_ids, default_tokenizer_dir

    rng = np.random.default_rng(0)
    captions = {caption(Attributes("circle", "red", "white"), rng) for _ in range(300)}
    assert {"a red circle", "a red shape", "a circle", "a shape", ""} <= captions
    assert clip_token_ids(default_tokenizer_dir()) == DemoModel.load().words.token_ids


def test_unknown_words_are_named(demo):
    with pytest.raises(ValueError, match="'dog'"):
        demo.words(["a red dog"])


def test_checkpoint_is_detected_as_sd15(loaded):
    model = loaded[0]
    assert type(model.model.model_config).__name__ == "SD15"
    assert model.model.model_config.unet_config["model_channels"] == 320


def test_unet_in_host_equals_slim_unet(loaded, demo):
    dm = loaded[0].model.diffusion_model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([5.0, 400.0, 990.0])
    context = demo.words(["a red circle", "", "a shape on a black background"])
    with torch.inference_mode():
        host = dm(x, timesteps=t, context=context).float()
        ours = demo.unet(x, t, context)
    assert (host - ours).abs().max().item() < 1e-4 * max(1.0, ours.abs().max().item())


def test_clip_in_host_equals_word_encoder(loaded, demo):
    clip = loaded[1]
    for prompt in ("a red circle on a white background", "a shape", ""):
        with torch.inference_mode():
            host = clip.encode_from_tokens(clip.tokenize(prompt)).float()
        ours = demo.words([prompt])
        # the host may run CLIP in fp16 on a CPU: agreement to fp16 precision of unit-scale features
        assert host.shape == ours.shape == (1, 77, 768)
        assert (host - ours).abs().max().item() < 2e-2, prompt


def test_vae_in_host_round_trips_like_the_narrow_autoencoder(loaded, demo):
    vae = loaded[2]
    images, _, _ = batch(4, np.random.default_rng(7))
    with torch.inference_mode():
        latent = vae.encode(images.permute(0, 2, 3, 1))  # ComfyUI IMAGE: [B, H, W, 3]
        decoded = vae.decode(latent).float()
    # ComfyUI's latent times 0.18215 is what the UNet sees; the narrow encoder gives the same
    assert torch.allclose(latent.float() * 0.18215, demo.encode(images), atol=1e-3)
    assert decoded.shape == (4, 64, 64, 3)
    assert (decoded.permute(0, 3, 1, 2) - images).abs().mean().item() < 0.03  # it reconstructs


def test_assembly_is_deterministic_and_small_parts_are_shipped(tmp_path):
    torch.manual_seed(1)
    a = checkpoint_state_dict()
    torch.manual_seed(2)
    b = checkpoint_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shipped = sum(p.stat().st_size for p in WEIGHTS.glob("*.safetensors"))
    assert shipped < 40e6, f"shipped demo weights are {shipped / 1e6:.1f} MB"


def test_shipped_classifier_reads_held_out_images():
    clf = load_classifier()
    images, labels, _ = batch(600, np.random.default_rng(2026))  # a seed the training never used
    pred = clf.eval()(images)
    for i, name in enumerate(ATTRIBUTES):
        accuracy = (pred[name].argmax(-1) == labels[:, i]).float().mean().item()
        assert accuracy >= 0.97, f"{name}: {accuracy:.3f}"


def test_demo_model_draws_what_prompts_name(demo):
    """Samples of 'a {colour} {shape}' show that shape and colour (the classifier decides)."""
    from unlearn_demo.shapes import COLORS, SHAPES

    clf = load_classifier()
    prompts = [f"a {c} {s}" for s in SHAPES for c in COLORS]
    pred = clf.predict(demo.generate(prompts, seed=3))
    shape_ok = np.mean([p == s for p, s in zip(pred["shape"], [s for s in SHAPES for _ in COLORS])])
    color_ok = np.mean([p == c for p, c in zip(pred["color"], [c for _ in SHAPES for c in COLORS])])
    assert shape_ok >= 0.8 and color_ok >= 0.8, (shape_ok, color_ok)


def test_training_log_is_shipped():
    log = json.loads((WEIGHTS / "training.json").read_text())
    assert min(log["classifier_heldout_accuracy"].values()) >= 0.97
    assert log["seconds"]["denoiser"] > 0


def test_diffusers_pipeline_computes_what_the_demo_model_does(demo):
    """diffusers' own single-file conversion of the checkpoint (UNet, CLIP) and AutoencoderTiny (TAESD)."""
    from unlearn_demo.diffusers_pipeline import demo_pipeline

    pipe = demo_pipeline()
    prompts = ["a red circle", "a blue square on a black background", ""]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([20, 500, 900])
    with torch.no_grad():
        context = pipe.text_encoder(ids)[0]
        assert (context - demo.words(prompts)).abs().max().item() < 1e-4
        assert (pipe.unet(x, t, context).sample - demo.unet(x, t, context)).abs().max().item() < 1e-3
        images = pipe(["a green triangle"] * 2, height=64, width=64, num_inference_steps=20, guidance_scale=4.0,
                      generator=torch.Generator().manual_seed(0), output_type="pt").images
    pred = load_classifier().predict(images)
    assert pred["shape"] == ["triangle"] * 2 and pred["color"] == ["green"] * 2, pred
