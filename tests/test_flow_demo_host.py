"""The flow demo inside ComfyUI: the demo's Load Flow Demo Model node gives a Flux MODEL that computes what the
engine's view of the flow demo computes, the pack's node erases from it, and the main job runs with --family flux.

Needs a host that has Flux (the current ComfyUI, COMFYUI_PATH); the bundled March 2024 host predates Flux, and
these tests skip there, saying so.
"""

from __future__ import annotations

import pytest
import torch

from comfy_host import pack_submodule
from helpers import assert_the_demo_thresholds, unlearn_from_text
from unlearn_demo.assemble import write_checkpoint
from unlearn_demo.flow_model import FlowDemoDenoiser, FlowDemoModel
from unlearn_demo.headless import DEMO_NODES_DIR_NAME, host_has_flux
from unlearn_demo.main_job import JobOptions, run


@pytest.fixture(scope="module")
def flux_host(comfy):
    from comfy import model_base

    if not hasattr(model_base, "Flux"):
        pytest.skip("this ComfyUI (the bundled March 2024 one) has no Flux: run with COMFYUI_PATH=<current>")
    return comfy


@pytest.fixture(scope="module")
def demo_parts(flux_host, comfy_root):
    """(Flux MODEL from the demo's node, CLIP and VAE from the demo checkpoint through the stock loader)."""
    import comfy.sd

    path = write_checkpoint(comfy_root / "models" / "checkpoints")
    with torch.inference_mode():
        model = flux_host.NODE_CLASS_MAPPINGS["UnlearnDemoLoadFlowModel"]().load()[0]
        _, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    return model, clip, vae


def test_the_demo_node_loads_on_every_host_and_says_what_a_host_without_flux_lacks(comfy, comfy_root):
    """Its folder sits next to the pack (not in it) on both hosts; the 2024 host gets a clear error, no traceback."""
    from comfy import model_base

    assert (comfy_root / "custom_nodes" / DEMO_NODES_DIR_NAME).is_dir()
    node = comfy.NODE_CLASS_MAPPINGS["UnlearnDemoLoadFlowModel"]
    assert node.RETURN_TYPES == ("MODEL",) and not node.__name__.startswith("DivergenceUnlearn")
    if not hasattr(model_base, "Flux"):
        with pytest.raises(RuntimeError, match="predates Flux .* COMFYUI_PATH"):
            node().load()


def test_the_flux_model_predicts_what_the_engine_predicts(flux_host, pack_nodes, demo_parts):
    """Host path (Flux model base, ModelSamplingFlux, the checkpoint's CLIP) = the engine's FlowDemoDenoiser."""
    import comfy.model_base
    import comfy.model_sampling

    model, clip, _ = demo_parts
    assert isinstance(model.model, comfy.model_base.Flux)
    assert isinstance(model.model.model_sampling, comfy.model_sampling.ModelSamplingFlux)
    host = pack_submodule(pack_nodes, "nodes.comfy_adapter").ComfyDenoiser(model, clip)
    assert (host.architecture, host.prediction_type, host.latent_channels) == ("flux", "flow", 4)
    engine = FlowDemoDenoiser(FlowDemoModel.load())
    # ModelSamplingFlux's grid has 10,000 points, the engine's view of the demo 1,000: every tenth is the same s
    torch.testing.assert_close(host.alphas_cumprod[9::10], engine.alphas_cumprod, atol=1e-6, rtol=1e-4)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 500, 999])
    prompts = ["a red circle", "a blue shape", ""]
    with torch.no_grad():
        ours = host(x, 10 * t + 9, host.encode_prompts(prompts, (64, 64)))
        theirs = engine(x, t, engine.encode_prompts(prompts, (64, 64)))
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-2)
    host.release()


def test_the_pack_erases_from_the_flow_demo_and_the_stock_lora_loader_applies_the_file(flux_host, pack_nodes,
                                                                                        demo_parts, comfy_root):
    """The node trains the Flux model's text stream (auto: LoRA), and LoraLoaderModelOnly gives the same model."""
    import comfy.model_management as mm

    model, clip, _ = demo_parts
    text = "a red circle -> a red shape\nkeep: a blue square\n"
    erased, erasure = unlearn_from_text(pack_nodes, model, clip, text, lora_rank=-1, steps=6)[:2]
    assert erasure.lora and all(".txt_attn.qkv." in name for name in erasure.lora), sorted(erasure.lora)
    with torch.inference_mode():
        saved = pack_nodes["DivergenceUnlearnSaveErasure"].execute(erasure, "erasures/flow_demo")
    name = saved.ui["text"][0]
    with torch.inference_mode():
        loaded = flux_host.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]().load_lora_model_only(model, name, 1.0)[0]

    def denoised(patcher):
        mm.load_models_gpu([patcher])
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            cond, pooled = clip.encode_from_tokens(clip.tokenize("a red circle"), return_pooled=True)
            out = patcher.model.apply_model(x, torch.tensor([0.6]), c_crossattn=cond, y=pooled)
        mm.unload_all_models()
        return out

    before, ours, stock = denoised(model), denoised(erased), denoised(loaded)
    assert (ours - before).abs().max() > 1e-3
    torch.testing.assert_close(stock, ours, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_main_job_family_flux_erases_circle_in_comfyui(tmp_path):
    """The README's main job with --family flux: the flow demo as a Flux MODEL in a real ComfyUI server, the
    node's defaults, the SD demo's thresholds read by the same classifier."""
    if not host_has_flux():
        pytest.skip("this ComfyUI (the bundled March 2024 one) has no Flux: run with COMFYUI_PATH=<current>")
    out = tmp_path / "flow"
    result = run(JobOptions(family="flux"), out, workdir=tmp_path)
    assert_the_demo_thresholds(result["summary"])
    assert "flow demo model (Flux layout)" in (out / "report.md").read_text()
