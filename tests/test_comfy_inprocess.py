"""The nodes inside a real ComfyUI, in-process: loaded by ComfyUI's own loader, run on ComfyUI's classes."""

from __future__ import annotations

import os

import pytest
import torch

from comfy_host import report_numbers
from helpers import load_concepts, unlearn, untrained


def apply_model(patcher, cond, seed=0):
    """The host's denoised prediction for one fixed noisy latent (loads the patches like a sampler does)."""
    import comfy.model_management as mm

    mm.load_models_gpu([patcher])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 4, 4, generator=gen)
    sigma = torch.tensor([2.0])
    with torch.inference_mode():
        out = patcher.model.apply_model(x, sigma, c_crossattn=cond)
    mm.unload_all_models()
    return out


def encode(clip, text):
    with torch.inference_mode():
        return clip.encode_from_tokens(clip.tokenize(text))


def test_pack_registers_nodes_with_display_names(comfy, pack_nodes):
    assert set(pack_nodes) == {"DivergenceUnlearnLoadConceptSet", "DivergenceUnlearn", "DivergenceUnlearnApplyErasure",
                               "DivergenceUnlearnSaveErasure", "DivergenceUnlearnErasureReport",
                               "DivergenceUnlearnRobustnessProbe"}
    assert comfy.NODE_DISPLAY_NAME_MAPPINGS["DivergenceUnlearn"] == "Divergence Unlearn (α)"
    for cls in pack_nodes.values():
        assert cls.CATEGORY == "unlearning" and cls.DESCRIPTION
        for section in ("required", "optional"):  # V3 output nodes also list hidden inputs (no options)
            for name, spec in cls.INPUT_TYPES().get(section, {}).items():
                assert spec[1].get("tooltip"), f"{cls.__name__}.{name} has no tooltip"


def test_load_concept_set_merges_and_reports_errors(pack_nodes):
    concepts, summary = load_concepts(pack_nodes, "a red circle -> a red shape\nkeep: a blue square")
    assert [(p.target, p.anchor) for p in concepts.pairs] == [("a red circle", "a red shape")]
    assert "a red circle" in summary
    with pytest.raises(ValueError, match="line 1"):
        load_concepts(pack_nodes, "just a line without arrow")
    with pytest.raises(ValueError, match="nothing to erase"):
        load_concepts(pack_nodes, "# only a comment")
    with torch.inference_mode():
        merged, _ = pack_nodes["DivergenceUnlearnLoadConceptSet"].execute("x -> y", "nudity", "none").args
    assert len(merged.pairs) > 1


def test_unlearn_returns_erased_clone_and_leaves_input_untouched(pack_nodes, sd15_model, sd15_clip):
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    target = encode(sd15_clip, "a red circle")
    before = apply_model(sd15_model, target)
    weights_before = {k: v.clone() for k, v in sd15_model.model.diffusion_model.state_dict().items()}
    erased, erasure, chart = unlearn(pack_nodes, sd15_model, sd15_clip, concepts)
    assert chart.shape[0] == 1 and chart.shape[-1] == 3 and 0 <= chart.min() and chart.max() <= 1
    assert erased is not sd15_model and not sd15_model.patches
    assert torch.equal(apply_model(sd15_model, target), before)
    after = apply_model(erased, target)
    assert not torch.allclose(after, before)
    for k, v in sd15_model.model.diffusion_model.state_dict().items():
        assert torch.equal(v, weights_before[k]), f"shared weight {k} changed"
    assert erasure.metadata.family == "SD15" and erasure.metadata.key_format == "ldm"
    assert all(".attn2.to_" in n for n in erasure.names)


def test_a_run_that_hits_the_cap_says_so_on_the_nodes_chart_and_console(pack_nodes, sd15_model, sd15_clip, capsys):
    """erase_until out of reach in 3 steps: the run ends on the cap, and the node says so (a warning in red on its
    loss chart, and on the console), where a run asked for exactly its steps says nothing of the kind."""
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    _, capped, capped_chart = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=3, erase_until=5.0)
    capped_console = capsys.readouterr().out
    _, plain, plain_chart = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=3, erase_until=0.0)

    def warning_pixels(chart: torch.Tensor) -> int:
        """Red pixels in the band under the title, where the chart writes a warning (the panels start below it)."""
        band = chart[0, 16:24] * 255
        return int((band[..., 0] - band[..., 1] > 80).sum())

    assert capped.metadata.capped and not plain.metadata.capped
    assert warning_pixels(capped_chart) > 100 and warning_pixels(plain_chart) == 0
    assert "WARNING: erase_until 500% not reached in 3 steps" in capped_console
    assert "WARNING" not in capsys.readouterr().out


def test_robustness_probe_attacks_an_erasure_in_the_host(pack_nodes, sd15_model, sd15_clip):
    """The probe learns a soft prompt through the host's UNet (under inference mode, as the executor runs it)."""
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape\nkeep: a blue square")
    _, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts)
    weights_before = {k: v.clone() for k, v in sd15_model.model.diffusion_model.state_dict().items()}
    settings = dict(attack="soft_prompt", steps=3, learning_rate=5e-3, images=2, batch_size=2, init_word="", seed=0,
                    resolution=32, sample_steps=2)
    node = pack_nodes["DivergenceUnlearnRobustnessProbe"]
    with torch.inference_mode():
        out = node.execute(sd15_model, sd15_clip, erasure, concepts, **settings)
    chart, conditioning, text = out.args
    assert chart.shape[0] == 1 and chart.shape[-1] == 3  # no VAE: the chart of the numbers
    target = encode(sd15_clip, "a red circle")
    assert conditioning[0][0].shape == target.shape and not torch.allclose(conditioning[0][0], target.float())
    assert "restored" in text and out.ui["text"] == [text]
    for k, v in sd15_model.model.diffusion_model.state_dict().items():
        assert torch.equal(v, weights_before[k]), f"shared weight {k} changed"
    with pytest.raises(ValueError, match="use the attack soft_prompt"), torch.inference_mode():
        node.execute(sd15_model, sd15_clip, erasure, concepts, **{**settings, "attack": "textual_inversion"})


def test_unlearn_trains_through_host_blocks_with_grad(pack_nodes, sd15_model, sd15_clip):
    """Backward runs through ComfyUI's transformer blocks (in-place adds on 2024 hosts are shimmed)."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    original = getattr(BasicTransformerBlock, "_forward", None)  # absent on current hosts
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape\nkeep: a blue square")
    _, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, parameter_set="non_cross_attn", steps=1)
    assert getattr(BasicTransformerBlock, "_forward", None) is original, "the compatibility shim leaked out of the run"
    assert untrained(erasure) == []


def test_apply_erasure_strength_and_mismatch(pack_nodes, sd15_model, sd15_clip):
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    erased, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts)
    apply = pack_nodes["DivergenceUnlearnApplyErasure"]
    target = encode(sd15_clip, "a red circle")
    with torch.inference_mode():
        zero = apply.execute(sd15_model, 0.0, "none", erasure).args[0]
        one = apply.execute(sd15_model, 1.0, "none", erasure).args[0]
    assert torch.equal(apply_model(zero, target), apply_model(sd15_model, target))
    assert torch.allclose(apply_model(one, target), apply_model(erased, target), atol=1e-6)
    name = erasure.names[0]
    erasure.shapes[name] = (3, 3)
    erasure.metadata.family = "SDXL"
    with pytest.raises(ValueError, match="made for a SDXL model and does not fit this SD15 model"):
        with torch.inference_mode():
            apply.execute(sd15_model, 1.0, "none", erasure)
    with pytest.raises(ValueError, match="no erasure given"):
        apply.execute(sd15_model, 1.0, "none", None)


def test_saved_erasure_loads_in_stock_lora_loader_with_same_predictions(comfy, pack_nodes, sd15_model, sd15_clip):
    import folder_paths

    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    erased, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, lora_rank=4)
    saver = pack_nodes["DivergenceUnlearnSaveErasure"]
    first = saver.execute(erasure, "tests/erasure").ui["text"][0]
    second = saver.execute(erasure, "tests/erasure").ui["text"][0]
    assert first != second, "an existing erasure file was overwritten"
    loras = folder_paths.get_folder_paths("loras")[0]
    assert os.path.isfile(os.path.join(loras, first)) and first in folder_paths.get_filename_list("loras")
    with torch.inference_mode():
        stock = comfy.LoraLoaderModelOnly().load_lora_model_only(sd15_model, first, 1.0)[0]
        ours = pack_nodes["DivergenceUnlearnApplyErasure"].execute(sd15_model, 1.0, first).args[0]
    target = encode(sd15_clip, "a red circle")
    expected = apply_model(erased, target)
    assert torch.allclose(apply_model(stock, target), expected, atol=1e-5)
    assert torch.allclose(apply_model(ours, target), expected, atol=1e-6)
    for bad in ("../escape", "/abs/path", "a/../../b", "", "x;rm"):
        with pytest.raises(ValueError, match="not allowed|outside"):
            saver.execute(erasure, bad)


def test_report_measures_movement(pack_nodes, sd15_model, sd15_clip):
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape\nkeep: a blue square")
    _, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=8, learning_rate=3e-3)
    with torch.inference_mode():
        out = pack_nodes["DivergenceUnlearnErasureReport"].execute(sd15_model, sd15_clip, erasure, concepts, 32, 2, 0)
    text, chart = out.args
    assert "'a red circle' -> 'a red shape': moved" in text and "keep 'a blue square'" in text
    assert chart.shape[-1] == 3


def test_the_report_given_the_erased_model_measures_the_erasure_once(pack_nodes, sd15_model, sd15_clip):
    """Divergence Unlearn's MODEL, or Apply Erased UNet's at any strength, wired where the original belongs: the
    erasure's patches are taken off, so the report is the original model's, not that of the erasure applied twice."""
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape\nkeep: a blue square")
    erased, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=8, learning_rate=3e-3)
    half, = pack_nodes["DivergenceUnlearnApplyErasure"].execute(sd15_model, 0.5, "none", erasure).args
    report = pack_nodes["DivergenceUnlearnErasureReport"]
    with torch.inference_mode():
        texts = [report.execute(model, sd15_clip, erasure, concepts, 32, 2, 0).args[0]
                 for model in (sd15_model, erased, half)]
    assert texts[1] == texts[0] and texts[2] == texts[0]
    assert set(erased.patches) == {"diffusion_model." + n for n in erasure.names}  # the inputs keep their patches


def test_missing_clip_and_unsupported_model_are_clear_errors(pack_nodes, sd15_model, sd15_clip):
    concepts, _ = load_concepts(pack_nodes, "a -> b")
    with pytest.raises(ValueError, match="no CLIP is connected"):
        unlearn(pack_nodes, sd15_model, None, concepts)


def test_v_prediction_model_trains_in_its_own_parameterisation(pack_nodes, sd15_clip):
    from tiny_comfy import build_patcher

    with torch.inference_mode():
        model = build_patcher("SD15", seed=1, model_channels=64, v_prediction=True)
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    target = encode(sd15_clip, "a red circle")
    erased, erasure, _ = unlearn(pack_nodes, model, sd15_clip, concepts)
    assert erasure.metadata.prediction_type == "v_prediction"
    assert not torch.allclose(apply_model(erased, target), apply_model(model, target))


def test_sdxl_family_trains_with_y_conditioning_and_refuses_sd15_erasures(pack_nodes, sd15_model, sd15_clip):
    """SDXL path (Segmind-Vega-shaped UNet with ADM ``y``); the text encoders are a stand-in (see tiny_comfy)."""
    from tiny_comfy import StandInSDXLClip, build_patcher

    with torch.inference_mode():
        sdxl = build_patcher("Segmind_Vega", seed=0, model_channels=64)
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape\nkeep: a blue square")
    erased, erasure, _ = unlearn(pack_nodes, sdxl, StandInSDXLClip(), concepts, steps=2)
    assert erasure.metadata.family == "Segmind_Vega"
    assert untrained(erasure) == []
    assert set(erased.patches) == {"diffusion_model." + n for n in erasure.names}
    _, sd15_erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=1)
    with pytest.raises(ValueError, match="made for a SD15 model and does not fit this Segmind_Vega model"):
        with torch.inference_mode():
            pack_nodes["DivergenceUnlearnApplyErasure"].execute(sdxl, 1.0, "none", sd15_erasure)


def test_cancel_stops_within_a_step_and_frees_the_training_copy(pack_nodes, sd15_model, sd15_clip):
    import gc

    import comfy.model_management as mm

    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=10000)
    finally:
        mm.interrupt_current_processing(False)
    gc.collect()
    copies = [o for o in gc.get_objects() if type(o).__name__ == "ComfyDenoiser"]
    assert all(o.net is None for o in copies), "a training copy of the UNet outlived the cancelled run"


def test_gradient_checkpointing_in_the_host_gives_the_same_erasure(pack_nodes, sd15_model, sd15_clip):
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    _, plain, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=2)
    _, ckpt, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=2, gradient_checkpointing=True)
    assert all(torch.allclose(plain.delta(n), ckpt.delta(n), atol=1e-6) for n in plain.names)


def test_hellinger_erasure_moves_target_onto_anchor_and_keeps_preservation(pack_nodes, sd15_model, sd15_clip):
    """Measured through Erasure Report on fixed probe latents (not the training latents)."""
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape\nkeep: a blue square")
    _, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=40, learning_rate=1e-4,
                            batch_size=2, anchor_samples=4, sample_steps=4)
    with torch.inference_mode():
        out = pack_nodes["DivergenceUnlearnErasureReport"].execute(sd15_model, sd15_clip, erasure, concepts, 32, 4, 0)
    print(out.args[0])
    numbers = report_numbers(out.args[0])
    assert numbers["moved"] >= 40 and numbers["drift"] <= 10, out.args[0]  # measured: 79.9%, 2.1%



def test_apply_notes_when_the_model_is_not_the_one_trained_on(pack_nodes, sd15_model, sd15_clip, capsys):
    from tiny_comfy import build_patcher

    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    _, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=1)
    apply = pack_nodes["DivergenceUnlearnApplyErasure"]
    capsys.readouterr()
    with torch.inference_mode():
        apply.execute(sd15_model, 1.0, "none", erasure)
        assert "weights differ" not in capsys.readouterr().out
        apply.execute(build_patcher("SD15", seed=7, model_channels=64), 1.0, "none", erasure)
    assert "weights differ from those the erasure was trained on" in capsys.readouterr().out


def test_concept_set_file_from_the_models_folder_and_its_change_detection(pack_nodes):
    import folder_paths

    node = pack_nodes["DivergenceUnlearnLoadConceptSet"]
    path = os.path.join(folder_paths.get_folder_paths("concept_sets")[0], "test_styles.yaml")
    with open(path, "w") as f:
        f.write("pairs:\n  - Van Gogh -> a painting\nkeep:\n  - a photo of a dog\n")
    assert "test_styles.yaml" in folder_paths.get_filename_list("concept_sets")
    with torch.inference_mode():
        concepts, _ = node.execute("", "none", "test_styles.yaml").args
    assert [(p.target, p.anchor) for p in concepts.pairs] == [("Van Gogh", "a painting")]
    assert concepts.keep == ("a photo of a dog",)
    first = node.fingerprint_inputs(text="", preset="none", file="test_styles.yaml")
    os.utime(path, (0, 0))
    assert node.fingerprint_inputs(text="", preset="none", file="test_styles.yaml") != first


def test_model_of_an_untrainable_kind_is_a_clear_error(pack_nodes, sd15_clip):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models as sm
    from tiny_comfy import SD15_TINY

    config = sm.SD15(dict(SD15_TINY, model_channels=64))
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        edm = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION_EDM)
        patcher = comfy.model_patcher.ModelPatcher(edm, torch.device("cpu"), torch.device("cpu"))
    concepts, _ = load_concepts(pack_nodes, "a -> b")
    with pytest.raises(ValueError, match=r"samples with \w+ \(V_PREDICTION_EDM\); Divergence Unlearn trains epsilon- and v-prediction"):
        unlearn(pack_nodes, patcher, sd15_clip, concepts)


def test_keep_projection_keeps_the_keep_prompts_exactly_through_a_contextual_clip(pack_nodes, sd15_model, sd15_clip):
    """ComfyUI's CLIP-L mixes the words of a prompt (unlike the demo's word rows): the listed keep prompts still
    predict exactly as before, and the target moves (README, "keep_projection")."""
    text = "a red circle -> a red shape\nkeep: a blue square\nkeep: a green triangle"
    concepts, _ = load_concepts(pack_nodes, text)
    erased, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=10, learning_rate=1e-3,
                                 keep_projection=True)
    assert erasure.metadata.keep_projection.status == "applied", erasure.metadata.keep_projection
    for prompt, changed in (("a blue square", False), ("a green triangle", False), ("a red circle", True)):
        cond = encode(sd15_clip, prompt)
        moved = (apply_model(erased, cond) - apply_model(sd15_model, cond)).abs().max().item()
        assert (moved > 1e-3) if changed else (moved < 1e-5), (prompt, moved)
