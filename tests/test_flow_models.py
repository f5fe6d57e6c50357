"""Flow-matching transformers (Flux dev and schnell, SD3/SD3.5) through the host's own classes.

The engine's maths (the flow parametrisation, its KL weight, the sampler on a flow path with an analytic
denoiser) runs everywhere; the rest needs a host that has these families (ComfyUI from mid-2024: the
current host given by COMFYUI_PATH; the bundled 2024 host predates them and skips, saying so).
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from helpers import SHAPE, AnalyticDenoiser, concept_set, pool_of, unlearn_from_text
from unlearn_core.architectures import ARCHITECTURES, architecture_of
from unlearn_core.divergences import kl_timestep_weight
from unlearn_core.erasure import Erasure, ErasureError, export_prefix, fingerprint
from unlearn_core.metadata import ErasureMetadata
from unlearn_core.export import diffusers_modules, to_diffusers_lora
from unlearn_core.parameters import select_parameters
from unlearn_core.schedule import abar_from_flow_sigma, flow_coordinates, predict_x0_eps

SIGMAS = torch.linspace(1, 1000, 1000, dtype=torch.float64) / 1000  # rectified flow, s = t / T (SD3 without shift)


def test_flow_parametrisation_inverts_the_flow_path():
    """x_flow = (1 - s) x0 + s eps, u = eps - x0, in DDPM coordinates x = x_flow / scale: x0 and eps come back."""
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 5, 4, 8, 8, generator=gen, dtype=torch.float64)
    s = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    abar = abar_from_flow_sigma(s)
    s_back, scale = flow_coordinates(abar)
    torch.testing.assert_close(s_back, s)
    view = (-1, 1, 1, 1)
    x_flow = (1 - s).view(view) * x0 + s.view(view) * eps
    x_vp = x_flow / scale.view(view)
    torch.testing.assert_close(x_vp, abar.sqrt().view(view) * x0 + (1 - abar).sqrt().view(view) * eps)
    x0_hat, eps_hat = predict_x0_eps(eps - x0, x_vp, abar, "flow")
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_kl_weight_of_a_flow_is_the_posterior_mean_ratio_of_its_velocity():
    """||dmu||^2 / (beta_t ||du||^2) of the DDPM posterior mean written in velocities, up to the mean-1 scale."""
    abar = abar_from_flow_sigma(SIGMAS)[:-1]  # s = 1 (abar 0) has no posterior mean in epsilon form
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    s, scale = flow_coordinates(abar)
    gen = torch.Generator().manual_seed(0)
    x_t, u_a, u_b = torch.randn(3, len(abar), 16, generator=gen, dtype=torch.float64)

    def mu(u):
        eps = scale[:, None] * x_t + (1 - s)[:, None] * u  # eps = x_flow + (1 - s) u
        return (x_t - (betas / (1 - abar).sqrt())[:, None] * eps) / (1 - betas).sqrt()[:, None]

    ratio = ((mu(u_a) - mu(u_b)) ** 2).sum(1) / (betas * ((u_a - u_b) ** 2).sum(1))
    torch.testing.assert_close(kl_timestep_weight(abar, "flow"), ratio / ratio.mean())


class AnalyticFlowDenoiser(AnalyticDenoiser):
    """The analytic denoiser (helpers, test_sampler's) as a rectified-flow model: it predicts u = eps - x0."""

    def forward(self, x_t, timesteps, cond):
        a = self.alphas_cumprod[timesteps].double().view(-1, 1, 1, 1)
        eps_out = AnalyticDenoiser.forward(self._as("epsilon"), x_t, timesteps, cond).double()
        x0 = (x_t.double() - (1 - a).sqrt() * eps_out) / a.sqrt().clamp_min(1e-6)
        x0 = torch.where(a > 1e-6, x0, torch.zeros_like(x0))
        return (eps_out - x0).float()

    def _as(self, kind):
        twin = AnalyticDenoiser(self.alphas_cumprod, kind)
        twin.images = self.images
        return twin


def test_sampler_on_a_flow_schedule_draws_the_data():
    """Euler on the flow ODE (DDIM in DDPM coordinates) from s = 1 lands on the data's four images."""
    denoiser = AnalyticFlowDenoiser(abar_from_flow_sigma(SIGMAS).float(), "flow")
    pool = pool_of(denoiser, samples=16, steps=20).x0
    assert pool.shape == (16, *SHAPE) and torch.isfinite(pool).all()
    nearest = (pool[:, None] - denoiser.images[None]).flatten(2).abs().amax(-1).min(1).values
    assert nearest.max() < 0.1, f"samples {nearest.tolist()} away from every data image"


def test_fingerprint_reads_tensors_as_large_as_flux_dev_qkv_and_keeps_small_ones_unchanged():
    """Flux-dev's text qkv has 9216 x 3072 = 28.3M values: past 2^24, float32 sample positions ran off its end."""
    big = torch.zeros(9216, 3072, dtype=torch.float16)
    assert len(fingerprint({"qkv": big})) == 16
    small = torch.randn(320, 768, generator=torch.Generator().manual_seed(0))
    flat = small.reshape(-1)
    idx = torch.linspace(0, flat.numel() - 1, 1024).long()  # the positions files saved before this fix used
    digest = hashlib.sha256(str(tuple(small.shape)).encode())
    digest.update(flat[idx].to(torch.float16).numpy().tobytes())
    assert fingerprint({"w": small}) == hashlib.sha256(digest.digest()).hexdigest()[:16]


# --------------------------------------------------------------------------- diffusers' loaders

WIDTH = 64


def transformer_erasure(family: str, names: list[str], full: bool = False) -> Erasure:
    """An erasure of ``names`` (ComfyUI's names, [3 * WIDTH, WIDTH] qkv or [WIDTH, WIDTH] proj) with random updates."""
    gen = torch.Generator().manual_seed(0)
    erasure = Erasure(metadata=ErasureMetadata(family=family, key_format="ldm"))
    for name in names:
        rows = 3 * WIDTH if ".qkv." in name else WIDTH
        erasure.shapes[name] = (rows, WIDTH)
        if full:
            erasure.full[name] = torch.randn(rows, WIDTH, generator=gen)
        else:
            erasure.lora[name] = (torch.randn(rows, 4, generator=gen), torch.randn(4, WIDTH, generator=gen), 8.0)
    return erasure


def peft_deltas(transformer, modules: list[str]) -> dict[str, torch.Tensor]:
    return {m: transformer.get_submodule(m).get_delta_weight("erasure") for m in modules}


def expected_deltas(erasure: Erasure, name: str, modules: list[str]) -> dict[str, torch.Tensor]:
    return dict(zip(modules, erasure.delta(name).chunk(len(modules))))


def flux_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=1,
                                  attention_head_dim=32, num_attention_heads=2, joint_attention_dim=WIDTH,
                                  pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12))


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_flux_erasure_loads_in_diffusers_flux_lora_loader(tmp_path, full):
    """The ComfyUI file itself (LoRA) and ``to_diffusers_lora`` both load into diffusers' Flux transformer
    with exactly the erasure's update on q, k and v of the text stream (and the other exported layers)."""
    from diffusers import FluxPipeline

    names = ["double_blocks.0.txt_attn.qkv.weight", "double_blocks.1.txt_attn.qkv.weight",
             "double_blocks.1.img_attn.proj.weight"]
    erasure = transformer_erasure("Flux", names, full)
    sources = {"to_diffusers_lora": to_diffusers_lora(erasure)}
    if not full:
        erasure.save(tmp_path / "erasure.safetensors")
        sources["ComfyUI file"] = FluxPipeline.lora_state_dict(str(tmp_path / "erasure.safetensors"))
    for label, state in sources.items():
        transformer = flux_transformer()
        transformer.load_lora_adapter(state, prefix="transformer", adapter_name="erasure")
        for name in names:
            modules = [m[len("transformer."):] for m in diffusers_modules(erasure, name)]
            for module, delta in peft_deltas(transformer, modules).items():
                torch.testing.assert_close(delta, expected_deltas(erasure, name, modules)[module], atol=1e-5,
                                           rtol=1e-4, msg=lambda m: f"{label}, {module}: {m}")


def test_sd3_erasure_exports_to_diffusers_sd3_lora():
    from diffusers import SD3Transformer2DModel

    names = ["joint_blocks.0.context_block.attn.qkv.weight", "joint_blocks.1.x_block.attn.qkv.weight",
             "context_embedder.weight"]
    erasure = transformer_erasure("SD3", names)
    erasure.shapes["context_embedder.weight"] = (WIDTH, WIDTH)
    erasure.lora["context_embedder.weight"] = (torch.randn(WIDTH, 4), torch.randn(4, WIDTH), 4.0)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=2,
                                        attention_head_dim=32, num_attention_heads=2, joint_attention_dim=WIDTH,
                                        caption_projection_dim=WIDTH, pooled_projection_dim=32, out_channels=16,
                                        pos_embed_max_size=16)
    transformer.load_lora_adapter(to_diffusers_lora(erasure), prefix="transformer", adapter_name="erasure")
    for name in names:
        modules = [m[len("transformer."):] for m in diffusers_modules(erasure, name)]
        for module, delta in peft_deltas(transformer, modules).items():
            torch.testing.assert_close(delta, expected_deltas(erasure, name, modules)[module], atol=1e-5, rtol=1e-4)
    biased = Erasure(full={"joint_blocks.0.context_block.attn.qkv.bias": torch.zeros(3 * WIDTH)},
                     shapes={"joint_blocks.0.context_block.attn.qkv.bias": (3 * WIDTH,)},
                     metadata=ErasureMetadata(family="SD3", key_format="ldm"))
    with pytest.raises(ErasureError, match="carries linear weights only"):
        to_diffusers_lora(biased)


# --------------------------------------------------------------------------- the host's models


@pytest.fixture(scope="module")
def dit(comfy):
    import comfy.supported_models as sm

    if not hasattr(sm, "Flux"):
        pytest.skip("this ComfyUI (the bundled March 2024 one) has no Flux or SD3: run with COMFYUI_PATH=<current>")
    import tiny_dit

    return tiny_dit


def test_released_sizes_name_each_parameter_set_and_the_stock_loader_reads_every_key(dit):
    """Flux-dev (11.9B), Flux-schnell and SD3.5-large on the meta device: each set selects what the
    README's table says, and every selected tensor has a key the host's LoRA loader maps to it."""
    import comfy.lora

    counts = {}
    for family in ("Flux", "FluxSchnell", "SD3"):
        model = dit.build_dit(family, full=True, device="meta")
        net = model.diffusion_model
        names = [n for n, _ in net.named_parameters()]
        arch = architecture_of(names)
        assert arch.name == ("mmdit" if family == "SD3" else "flux")
        lora_keys = comfy.lora.model_lora_keys_unet(model, {})
        for parameter_set in arch.parameter_sets:
            selected = select_parameters(net, parameter_set, arch.name)
            counts[family, parameter_set] = len(selected)
            for name in selected:
                key = export_prefix(name)
                if name.endswith(".weight"):
                    assert lora_keys.get(key) == "diffusion_model." + name, key
        kv = select_parameters(net, "cross_attn_kv", arch.name)
        block = "double_blocks" if arch.name == "flux" else "joint_blocks"
        assert all(n.startswith(block) and ("txt_attn.qkv" in n or "context_block.attn.qkv" in n) for n in kv)
        assert set(arch.checkpoint_lists) <= {n.split(".")[0] for n in names}
    assert counts["Flux", "cross_attn_kv"] == 19  # the qkv weights of the 19 double blocks (as SD's to_k/to_v: no bias)
    assert counts["SD3", "cross_attn_kv"] == 38
    assert counts["Flux", "context_embedder"] == counts["SD3", "context_embedder"] == 2
    assert counts["Flux", "full"] > counts["Flux", "non_cross_attn"] > counts["Flux", "attn"] > counts["Flux", "cross_attn"]


def test_unet_parameter_sets_are_unchanged(sd15_model):
    net = sd15_model.model.diffusion_model
    kv = select_parameters(net, "cross_attn_kv")
    assert kv and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in kv)
    with pytest.raises(ValueError, match="context_embedder.*matches no tensor of this unet network"):
        select_parameters(net, "context_embedder")
    assert ARCHITECTURES["unet"].parameter_sets.keys() == ARCHITECTURES["flux"].parameter_sets.keys()


def denoised(patcher, clip, prompt, guidance=None):
    """The host's own prediction (BaseModel.apply_model, as its samplers call it) for one fixed noisy latent."""
    import comfy.model_management as mm

    mm.load_models_gpu([patcher])
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
        extra = {"guidance": torch.tensor([guidance])} if guidance is not None else {}
        out = patcher.model.apply_model(x, torch.tensor([0.6]), c_crossattn=cond, y=pooled, **extra)
    mm.unload_all_models()
    return out


@pytest.mark.parametrize("family", ["Flux", "FluxSchnell", "SD3"])
def test_node_erases_from_the_transformer_and_the_stock_loader_applies_the_file(comfy, pack_nodes, dit, family):
    import folder_paths

    clip = dit.StandInSD3Clip() if family == "SD3" else dit.StandInFluxClip()
    with torch.inference_mode():
        model = dit.build_dit_patcher(family)
    erased, erasure, summary = unlearn_from_text(pack_nodes, model, clip, "a red circle -> a red shape")
    assert erasure.metadata.family == family and erasure.metadata.prediction_type == "flow"
    kv = ".context_block.attn.qkv.weight" if family == "SD3" else ".txt_attn.qkv.weight"
    assert erasure.names and all(n.endswith(kv) for n in erasure.names) and set(erasure.lora) == set(erasure.names)
    with torch.inference_mode():
        report = pack_nodes["DivergenceUnlearnErasureReport"].execute(
            model, clip, erasure, concept_set(pack_nodes, "a red circle -> a red shape"), 64, 4, 0).args[0]
    moved = float(report.split("moved ")[1].split("%")[0])
    assert moved > 20, report  # the target's prediction moved towards the anchor's (measured: Flux 40-60 %)

    name = pack_nodes["DivergenceUnlearnSaveErasure"].execute(erasure, f"tests/{family}").ui["text"][0]
    assert os.path.isfile(os.path.join(folder_paths.get_folder_paths("loras")[0], name))
    with torch.inference_mode():
        stock = comfy.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]
    guidance = 3.5 if family == "Flux" else None
    expected = denoised(erased, clip, "a red circle", guidance)
    assert not torch.allclose(denoised(model, clip, "a red circle", guidance), expected, atol=1e-4)
    torch.testing.assert_close(denoised(stock, clip, "a red circle", guidance), expected, rtol=0, atol=1e-5)


def test_flux_dev_guidance_is_an_input_and_sampling_runs_one_prediction_per_step(comfy, pack_nodes, dit):
    from comfy_host import pack_submodule

    adapter = pack_submodule(pack_nodes, "nodes.comfy_adapter")
    with torch.inference_mode():
        dev, schnell = dit.build_dit_patcher("Flux"), dit.build_dit_patcher("FluxSchnell")
    with torch.inference_mode(False):
        dev, schnell = adapter.ComfyDenoiser(dev, dit.StandInFluxClip()), adapter.ComfyDenoiser(schnell, dit.StandInFluxClip())
    assert dev.guidance_distilled and not schnell.guidance_distilled
    cond = dev.encode_prompts(["a", "b"], (64, 64))
    assert cond["guidance"].tolist() == [adapter.FLUX_GUIDANCE] * 2 and "guidance" not in schnell.encode_prompts(["a"], (64, 64))
    batches = []
    dev.net.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    from unlearn_core.schedule import ddim_sample

    ddim_sample(dev, cond, dev.encode_prompts(["", ""], (64, 64)), (16, 8, 8), 3, 6.0, torch.Generator().manual_seed(0))
    assert batches == [2, 2, 2], "a guidance-distilled model is sampled without classifier-free guidance"


def test_the_graphs_model_sampling_patch_sets_the_training_schedule(comfy, pack_nodes, dit):
    """ModelSamplingFlux / ModelSamplingSD3 (shift) upstream of the node change the schedule it trains on."""
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux, ModelSamplingSD3
    from comfy_host import pack_submodule

    adapter = pack_submodule(pack_nodes, "nodes.comfy_adapter")
    with torch.inference_mode():
        flux, sd3 = dit.build_dit_patcher("Flux"), dit.build_dit_patcher("SD3")
        flux_shifted = ModelSamplingFlux().patch(flux, 2.0, 0.5, 1024, 1024)[0]  # shift 2.0 (default 1.15)
        sd3_shifted = ModelSamplingSD3().patch(sd3, 6.0)[0]
    for plain, shifted in ((flux, flux_shifted), (sd3, sd3_shifted)):
        a, b = (adapter.ComfyDenoiser(m, dit.StandInFluxClip()).alphas_cumprod for m in (plain, shifted))
        assert a.shape == b.shape and a[-1] == b[-1] == 0
        assert (b[1:-1] < a[1:-1]).float().mean() > 0.9, "a larger shift spends more of the schedule at high noise"


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_sd3_file_loads_through_the_stock_unet_loader_and_trains(comfy, comfy_root, pack_nodes, dit, weight_dtype):
    path = comfy_root / "models" / "unet" / "tiny_sd3.safetensors"
    if not path.exists():
        dit.write_sd3_file(path)
    with torch.inference_mode():
        model = comfy.UNETLoader().load_unet(path.name, weight_dtype)[0]
    assert type(model.model.model_config).__name__ in ("SD3", "SD35")
    stored = next(model.model.diffusion_model.parameters()).dtype
    assert (stored == torch.float8_e4m3fn) == (weight_dtype == "fp8_e4m3fn")
    erased, erasure, _ = unlearn_from_text(pack_nodes, model, dit.StandInSD3Clip(), "a cat -> an animal", steps=2)
    assert erasure.metadata.prediction_type == "flow" and erasure.names
    assert all(torch.isfinite(t).all() for t in erasure.deltas().values())
    assert all(p.dtype == stored for p in model.model.diffusion_model.parameters()), "the host's weights changed"


@pytest.mark.slow
def test_flux_file_of_the_released_width_is_detected_by_the_stock_loader_and_trains(comfy, comfy_root, pack_nodes,
                                                                                    dit):
    """The host's Flux detection assumes the released width, so this file has it (one block of each kind, fp8)."""
    path = dit.write_flux_file(comfy_root / "models" / "unet" / "flux_one_block_fp8.safetensors")
    with torch.inference_mode():
        model = comfy.UNETLoader().load_unet(path.name, "default")[0]
    assert type(model.model.model_config).__name__ == "Flux"
    clip = dit.StandInFluxClip(context_dim=4096)
    erased, erasure, _ = unlearn_from_text(pack_nodes, model, clip, "a red circle -> a red shape", steps=2,
                                           anchor_samples=1, sample_steps=2, batch_size=1)
    assert erasure.names == ["double_blocks.0.txt_attn.qkv.weight"]
    assert erasure.shapes["double_blocks.0.txt_attn.qkv.weight"] == (3 * 3072, 3072)
    path.unlink()
