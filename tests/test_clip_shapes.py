"""The shapes demo with a contextual CLIP (``DOMAINS["clip_shapes"]``, :mod:`unlearn_demo.clip_text`): its text
encoder mixes the prompt as CLIP does, its checkpoint loads in the host's stock loader with ComfyUI's own CLIP-L
computing exactly that encoder, and the node's defaults erase on it, in the engine and in the host."""

from __future__ import annotations

import pytest
import torch

from helpers import SEEDS, load_concepts, unlearn
from unlearn_core.concepts import parse_concept_text
from unlearn_core.injection import DeltaInjection
from unlearn_core.metadata import Projection, Stop
from unlearn_core.trainer import EraseConfig, erase
from unlearn_demo.assemble import CLIP_SHAPES_CHECKPOINT_NAME, write_checkpoint
from unlearn_demo.clip_text import ClipLayersEncoder
from unlearn_demo.domains import DOMAINS
from unlearn_demo.main_job import demo_prompts
from unlearn_demo.model import CLIP_SHAPES_WEIGHTS, WEIGHTS

DOMAIN = DOMAINS["clip_shapes"]


@pytest.fixture(scope="module")
def model():
    return DOMAIN.load_model()


@pytest.fixture(scope="module")
def clf():
    return DOMAIN.load_classifier()


@pytest.fixture(scope="module")
def loaded(comfy, comfy_root):
    """(MODEL, CLIP) from ComfyUI's stock checkpoint loader on the assembled checkpoint."""
    import comfy.sd

    path = write_checkpoint(comfy_root / "models" / "checkpoints", CLIP_SHAPES_WEIGHTS)
    assert path.name == CLIP_SHAPES_CHECKPOINT_NAME
    with torch.inference_mode():
        return comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True)[:2]


def shapes_seen(model, clf, prompts: list[str], erasure=None) -> list[str]:
    denoiser = DOMAIN.make_denoiser(model)
    names = erasure.names if erasure is not None else []
    with DeltaInjection(denoiser.net, names, lambda n: erasure.delta(n)):
        images = [model.generate(prompts, seed=seed, denoiser=denoiser) for seed in SEEDS]
    return [s for batch in images for s in clf.predict(batch)["shape"]]


def test_every_row_mixes_the_words_before_it_and_none_after(model):
    words = model.words
    assert isinstance(words, ClipLayersEncoder)
    red_circle, blue_circle, red_square = words(["a red circle", "a blue circle", "a red square"])
    # rows: start, "a", colour, shape, end, padding...; causal: a row sees its own word and those before it
    assert torch.equal(red_circle[:2], blue_circle[:2])
    assert not torch.allclose(red_circle[2:], blue_circle[2:], atol=1e-3)  # every row from the colour on
    assert not torch.allclose(red_circle[3], blue_circle[3], atol=1e-3)  # "circle" after "red" is not after "blue"
    assert not torch.allclose(red_circle[20], red_square[20], atol=1e-3)  # padding carries the whole prompt


def test_shipped_parts_are_small_and_draw_their_prompts(model, clf):
    assert sum(f.stat().st_size for f in CLIP_SHAPES_WEIGHTS.glob("*.safetensors")) < 8_000_000
    assert (CLIP_SHAPES_WEIGHTS / "autoencoder.safetensors").read_bytes() == \
        (WEIGHTS / "autoencoder.safetensors").read_bytes()  # the shapes demo's latents, unchanged
    prompts = [f"a {c} {s}" for s in DOMAIN.attributes["shape"] for c in DOMAIN.attributes["color"]]
    pred = clf.predict(model.generate(prompts, seed=0))
    assert sum(p == q.split()[2] for p, q in zip(pred["shape"], prompts)) >= 0.8 * len(prompts)
    assert sum(p == q.split()[1] for p, q in zip(pred["color"], prompts)) >= 0.8 * len(prompts)


def test_the_hosts_clip_l_computes_the_contextual_encoder(loaded, model):
    host_model, clip = loaded
    assert type(host_model.model.model_config).__name__ == "SD15"
    for prompt in ("a red circle on a white background", "a shape", "", "a blue square"):
        with torch.inference_mode():
            host = clip.encode_from_tokens(clip.tokenize(prompt)).float()
        ours = model.words([prompt])
        assert host.shape == ours.shape == (1, 77, 768)
        assert (host - ours).abs().max().item() < 2e-2, prompt  # fp16 agreement (measured: ~1e-6 in fp32)


def test_the_defaults_erase_circles_here_and_stop_by_the_measure(model, clf):
    """EraseConfig() untouched on the contextual shapes: stops by the measure, circles gone, other shapes kept."""
    text, targets, keep = demo_prompts("circle", "")
    targets = [t for t, _ in targets]
    erasure = erase(DOMAIN.make_denoiser(model), parse_concept_text(text), EraseConfig(resolution=64,
                                                                                         sample_steps=10))
    meta = erasure.metadata
    assert meta.stop in (Stop.ERASED, Stop.SETTLED), meta.stopped
    assert meta.keep_projection.status in (Projection.APPLIED, Projection.FELL_BACK), meta.keep_projection.note
    assert shapes_seen(model, clf, targets).count("circle") >= 0.8 * len(targets) * len(SEEDS)
    after = shapes_seen(model, clf, targets, erasure)
    assert after.count("circle") <= 2, after
    kept, wanted = shapes_seen(model, clf, keep, erasure), [p.split()[2] for p in keep] * len(SEEDS)
    assert sum(k == w for k, w in zip(kept, wanted)) >= 0.75 * len(wanted), list(zip(kept, wanted))


def test_the_node_erases_on_the_hosts_contextual_clip(pack_nodes, loaded):
    """The Divergence Unlearn node on ComfyUI's own MODEL and CLIP from the checkpoint: its keep projection sees the
    mixed rows (more keep directions than the word-row demo's) and the run moves the target."""
    host_model, clip = loaded
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape\nkeep: a blue square\nkeep: a red square")
    _, erasure, _ = unlearn(pack_nodes, host_model, clip, concepts, steps=20, guidance_eta=-1.0, erase_until=0.0,
                            resolution=64, target_mode="anchor_guidance")
    projection = erasure.metadata.keep_projection
    assert projection.status == Projection.APPLIED, projection.note
    # rows that mix span more: the word-row demo's rows of these prompts span 6 directions, these 27 (engine)
    assert projection.keep_directions > 2 * 6, projection
    assert erasure.metadata.history[-1].step == 20
