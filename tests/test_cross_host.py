"""An erasure trained on a diffusers UNet loads through ComfyUI's stock LoraLoaderModelOnly onto the
same network held as a ComfyUI MODEL, and the two give the same predictions.

The network is ComfyUI's tiny one-level SD15-family UNet (``tiny_comfy``); its diffusers twin is a real
``UNet2DConditionModel`` holding the same weights, copied through ComfyUI's diffusers -> ldm key map
(``tiny_cross``). The diffusers side is driven by the library's ``DiffusersDenoiser``; its prompts are
encoded by ComfyUI's own CLIP (the ``sd15_clip`` fixture, through an ``encode_prompts`` override) rather
than a diffusers toy text encoder: both networks then see the very same context tensors, the ones a
ComfyUI workflow would feed the MODEL, and only the UNet weights, their names and the file format are
under test. The schedule is SD1.5's (scaled linear 0.00085-0.012), which is also ComfyUI's for SD15.

Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import torch

from unlearn_core.adapters.diffusers_sd import DiffusersDenoiser
from unlearn_core.concepts import parse_concept_text
from unlearn_core.erasure import Erasure
from unlearn_core.injection import DeltaInjection
from unlearn_core.trainer import EraseConfig, erase

CHANNELS = 64  # ComfyUI's SD15 key map depends on the block layout only, not on the width
SIGMAS = (0.5, 2.0, 8.0)
PROMPTS = ("a red circle", "a red shape", "a blue square")
AGREE = 1e-4  # float32, same weights, two implementations of the same network (epsilon outputs)
DENOISED_AGREE = AGREE * max(SIGMAS)  # denoised = x - sigma * epsilon


def _encode(clip, text: str) -> torch.Tensor:
    with torch.inference_mode():
        context = clip.encode_from_tokens(clip.tokenize(text))
    return context.clone()  # an ordinary tensor (outside inference mode), usable in autograd


class ComfyClipDiffusersDenoiser(DiffusersDenoiser):
    """The library's diffusers adapter with ComfyUI's CLIP as its prompt encoder (each prompt encoded once:
    the fp16 CLIP-L costs about a second per prompt on a CPU)."""

    def __init__(self, unet, scheduler, clip):
        super().__init__(unet, None, None, scheduler)
        self.clip = clip
        self.cache: dict[str, torch.Tensor] = {}

    def context(self, prompt: str) -> torch.Tensor:
        if prompt not in self.cache:
            self.cache[prompt] = _encode(self.clip, prompt)
        return self.cache[prompt]

    def encode_prompts(self, prompts, size):
        return {"context": torch.cat([self.context(p) for p in prompts])}


def _batch(contexts: list[torch.Tensor], x: torch.Tensor):
    """Every (prompt, sigma) combination as one batch: latents, sigmas, contexts."""
    n = len(SIGMAS)
    return (x.repeat(len(contexts) * n, 1, 1, 1), torch.tensor(SIGMAS).repeat(len(contexts)),
            torch.cat([c.repeat(n, 1, 1) for c in contexts]))


def _comfy_outputs(patcher, contexts, x) -> torch.Tensor:
    """The host's own sampler-path prediction (``BaseModel.apply_model``), with its patches loaded."""
    import comfy.model_management as mm

    xs, sigmas, context = _batch(contexts, x)
    mm.load_models_gpu([patcher])
    try:
        with torch.inference_mode():
            return patcher.model.apply_model(xs, sigmas, c_crossattn=context).clone()
    finally:
        mm.unload_all_models()


def _diffusers_outputs(unet, model_sampling, contexts, x) -> torch.Tensor:
    """The same prediction from the diffusers UNet: ComfyUI's input scaling, timestep and denoised formula."""
    xs, sigmas, context = _batch(contexts, x)
    with torch.no_grad():
        eps = unet(model_sampling.calculate_input(sigmas, xs), model_sampling.timestep(sigmas).float(),
                   encoder_hidden_states=context).sample
    return model_sampling.calculate_denoised(sigmas, eps, xs)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _stock_load(comfy, patcher, erasure: Erasure, file_name: str, caplog):
    """Save ``erasure`` into the host's loras folder and load it with the stock LoraLoaderModelOnly at
    strength 1; return the patched MODEL and the loader's "... not loaded" warnings."""
    import folder_paths

    erasure.save(os.path.join(folder_paths.get_folder_paths("loras")[0], file_name))
    caplog.clear()
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        stock = comfy.LoraLoaderModelOnly().load_lora_model_only(patcher, file_name, 1.0)[0]
    return stock, [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]


# (parameter set, LoRA rank): full deltas (.diff) and low-rank ones (.lora_up/.lora_down/.alpha) of the
# cross-attention K/V, and every tensor of the UNet as LoRA (2-D and 4-D conv weights) plus full deltas
# for the 1-D ones (norm scales as .diff, biases as .diff_b)
RUNS = (("cross_attn_kv", 0), ("cross_attn_kv", 4), ("full", 4))


def test_diffusers_erasure_loads_in_stock_lora_loader_with_same_predictions(comfy, pack_nodes, sd15_clip, caplog):
    import diffusers
    from tiny_comfy import build_patcher
    from tiny_cross import diffusers_twin

    with torch.inference_mode():
        patcher = build_patcher("SD15", seed=3, model_channels=CHANNELS)
    unet, names = diffusers_twin(patcher)
    model_sampling = patcher.model.model_sampling
    scheduler = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    denoiser = ComfyClipDiffusersDenoiser(unet, scheduler, sd15_clip)
    contexts = [denoiser.context(p) for p in PROMPTS]
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    # 1. the two networks are one network: raw UNet outputs, then the host's sampler-path predictions
    t = torch.tensor([17.0, 503.5, 980.0])
    with torch.inference_mode():
        raw_comfy = patcher.model.diffusion_model(x.repeat(3, 1, 1, 1), t, context=contexts[0].repeat(3, 1, 1))
    with torch.no_grad():
        raw_diffusers = unet(x.repeat(3, 1, 1, 1), t, encoder_hidden_states=contexts[0].repeat(3, 1, 1)).sample
    assert raw_comfy.abs().max() > 0.1, "degenerate network: outputs are too small to compare"
    raw_diff = _max_diff(raw_comfy, raw_diffusers)
    assert raw_diff < AGREE, f"the diffusers twin is not the ComfyUI network (max |diff| {raw_diff:.2e})"
    original = _comfy_outputs(patcher, contexts, x)
    twin_diff = _max_diff(original, _diffusers_outputs(unet, model_sampling, contexts, x))
    assert twin_diff < DENOISED_AGREE
    print(f"\nunerased: raw UNet max |diff| {raw_diff:.2e}, apply_model max |diff| {twin_diff:.2e}")

    concepts = parse_concept_text("a red circle -> a red shape\nkeep: a blue square")
    weights_before = {k: v.clone() for k, v in unet.state_dict().items()}
    for parameter_set, rank in RUNS:
        run = f"{parameter_set} rank {rank}"
        config = EraseConfig(parameter_set=parameter_set, lora_rank=rank, steps=2, learning_rate=3e-3,
                             batch_size=1, resolution=32, num_samples=2, sample_steps=2, seed=0)
        erasure = erase(denoiser, concepts, config)
        assert erasure.metadata.key_format == "diffusers"
        assert all(torch.equal(v, weights_before[k]) for k, v in unet.state_dict().items())
        if parameter_set == "full":
            assert sorted(erasure.names) == sorted(names) and erasure.full and erasure.lora
        else:  # to_k and to_v of the down, mid and two up transformers
            assert len(erasure.names) == 8 and bool(erasure.full) == (rank == 0) != bool(erasure.lora)

        # 2. every tensor of the file lands, once, on the ComfyUI weight that the host's key map names
        stock, ignored = _stock_load(comfy, patcher, erasure, f"cross_host_{parameter_set}_r{rank}.safetensors", caplog)
        assert not ignored, f"{run}: the stock loader ignored keys: {ignored[:3]}"
        expected = {"diffusion_model." + names[n] for n in erasure.names}
        assert set(stock.patches) == expected, f"{run}: patched {len(stock.patches)} of {len(expected)} weights"
        assert all(len(stock.patches[k]) == 1 for k in expected)
        assert not patcher.patches, "the stock loader changed its input MODEL"

        # 3. and the predictions are those of the in-memory erased diffusers UNet
        with DeltaInjection(unet, erasure.names, erasure.delta):
            erased = _diffusers_outputs(unet, model_sampling, contexts, x)
        loaded = _comfy_outputs(stock, contexts, x)
        moved, diff = _max_diff(erased, original), _max_diff(loaded, erased)
        print(f"{run}: {len(expected)} weights patched; erasure moved the predictions by {moved:.2e}; "
              f"stock-loaded ComfyUI vs erased diffusers max |diff| {diff:.2e}")
        assert moved > 100 * DENOISED_AGREE, f"{run}: the erasure barely changes the predictions ({moved:.2e})"
        assert diff < DENOISED_AGREE, f"{run}: the stock-loaded ComfyUI model is not the erased diffusers UNet"
        with torch.inference_mode():  # the pack's own Apply Erased UNet reads the same file the same way
            ours = pack_nodes["DivergenceUnlearnApplyErasure"].execute(
                patcher, 1.0, f"cross_host_{parameter_set}_r{rank}.safetensors").args[0]
        assert _max_diff(_comfy_outputs(ours, contexts, x), erased) < DENOISED_AGREE, f"{run}: Apply Erased UNet"

        if erasure.lora:  # the trainer's alpha equals the rank (scale 1): check that the host reads .alpha too
            rescaled = Erasure(full=dict(erasure.full), shapes=dict(erasure.shapes), metadata=replace(erasure.metadata),
                               lora={n: (up * 4, down, alpha / 4) for n, (up, down, alpha) in erasure.lora.items()})
            stock, ignored = _stock_load(comfy, patcher, rescaled, f"cross_host_{parameter_set}_alpha.safetensors",
                                         caplog)
            assert not ignored and set(stock.patches) == expected
            alpha_diff = _max_diff(_comfy_outputs(stock, contexts, x), erased)
            assert alpha_diff < DENOISED_AGREE, f"{run}: the host scales .lora_up @ .lora_down differently"

    assert _max_diff(_comfy_outputs(patcher, contexts, x), original) == 0.0, "the shared ComfyUI weights changed"

    # the check of step 2 sees a key that the stock loader ignores (a tensor name it cannot map)
    name = next(iter(erasure.full))
    owner, attr = name.rsplit(".", 1)
    erasure.full[f"{owner}_typo.{attr}"] = erasure.full.pop(name)
    erasure.shapes[f"{owner}_typo.{attr}"] = erasure.shapes.pop(name)
    stock, ignored = _stock_load(comfy, patcher, erasure, "cross_host_typo.safetensors", caplog)
    assert len(ignored) == 1 and "_typo" in ignored[0] and len(stock.patches) == len(erasure.names) - 1
