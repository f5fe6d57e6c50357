"""The node path's memory, in-process on the real host (run once per host: default and COMFYUI_PATH).

- nothing stays alive after a run: five successive one-step runs, and a cancelled run whose error is
  kept (as the host keeps it), leave the live tensor memory where it was;
- no whole copy of the weights: during a training step every frozen weight is the host's own tensor
  (same memory), only the trained tensors get (fp32) deltas; checked on full-size SD1.5 and SDXL
  architectures built with the host's classes (uninitialised fp16, never computed with).
"""

from __future__ import annotations

import gc
import sys

import pytest
import torch

from helpers import load_concepts, unlearn


def live_tensor_bytes() -> int:
    """Bytes of every storage that a live tensor holds (each storage counted once; meta tensors hold none)."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def weight_bytes(patcher) -> int:
    return sum(p.numel() * p.element_size() for p in patcher.model.diffusion_model.parameters())


def test_successive_runs_leave_no_tensor_alive(pack_nodes, sd15_model, sd15_clip):
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=1)  # first run: the host's caches fill once
    before = live_tensor_bytes()
    after = []
    for _ in range(5):
        unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=1)
        after.append(live_tensor_bytes())
    # one run's private state (deltas, optimiser, activations) is several % of the UNet; a leak adds it per run
    margin = 0.01 * weight_bytes(sd15_model)
    assert max(after) - before < margin, f"live tensor bytes before {before}, after each run {after}"


def test_a_cancelled_run_frees_its_tensors_while_the_error_is_kept(pack_nodes, sd15_model, sd15_clip):
    import comfy.model_management as mm

    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=1)
    before = live_tensor_bytes()
    calls = []

    def cancel_during_training(module, args):  # the Cancel button, pressed during the 4th UNet call
        calls.append(1)
        if len(calls) == 4:
            mm.interrupt_current_processing(True)

    hook = sd15_model.model.diffusion_model.register_forward_pre_hook(cancel_during_training)
    kept = []
    try:
        unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=20)
    except mm.InterruptProcessingException as error:
        kept.append(error)  # the host keeps the error (and its traceback) after a failed node
    finally:
        hook.remove()
        mm.interrupt_current_processing(False)
    assert kept and len(calls) < 20, "the run was not cancelled"
    assert live_tensor_bytes() - before < 0.01 * weight_bytes(sd15_model)


def live_storages() -> set[int]:
    gc.collect()
    return {obj.untyped_storage().data_ptr() for obj in gc.get_objects() if isinstance(obj, torch.Tensor)}


def test_a_training_step_copies_no_frozen_weight(pack_nodes, sd15_model, sd15_clip):
    unet = sd15_model.model.diffusion_model
    frozen_shapes = {tuple(p.shape) for n, p in unet.named_parameters()
                     if p.dim() >= 2 and ".attn2.to_k." not in n and ".attn2.to_v." not in n}
    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    existing = live_storages()  # the host's weights, and other models the host keeps loaded
    copies = []

    def look_for_copies(module, args):  # at every UNet call of the run, training steps included
        gc.collect()
        copies.extend(tuple(obj.shape) for obj in gc.get_objects()
                      if isinstance(obj, torch.Tensor) and tuple(obj.shape) in frozen_shapes
                      and obj.untyped_storage().data_ptr() not in existing)

    hook = unet.register_forward_pre_hook(look_for_copies)  # the node's view of the UNet inherits the hook
    try:
        unlearn(pack_nodes, sd15_model, sd15_clip, concepts, steps=1, precision="auto")
    finally:
        hook.remove()
    assert not copies, f"copies of frozen weights alive during the run: {copies[:5]}"


@pytest.mark.parametrize("family", ["SD15", "SDXL"])
def test_full_size_model_view_shares_every_weight_and_deltas_cover_only_trained_tensors(comfy, family):
    import comfy.model_patcher
    import comfy.supported_models as sm
    from tiny_comfy import SD15_FULL, SDXL_FULL, StandInSDXLClip

    from unlearn_core.parameters import WeightDeltas, select_parameters

    config = getattr(sm, family)(dict(SDXL_FULL if family == "SDXL" else SD15_FULL))
    config.set_inference_dtype(torch.float16, None)
    with torch.inference_mode():  # as the stock loader builds it; comfy.ops leaves the weights uninitialised
        model = config.get_model({}, "")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    size = weight_bytes(patcher)
    assert size > (4e9 if family == "SDXL" else 1.6e9)  # full size: 2.57 B / 0.86 B parameters in fp16
    adapter = next(m for n, m in sys.modules.items() if n.endswith(".nodes.comfy_adapter"))
    with torch.inference_mode():
        denoiser = adapter.ComfyDenoiser(patcher, StandInSDXLClip())
    try:
        host = {p.untyped_storage().data_ptr() for p in model.diffusion_model.parameters()}
        view = [p for p in denoiser.net.parameters()]
        assert {p.untyped_storage().data_ptr() for p in view} == host
        assert all(p.dtype == torch.float16 and not p.is_inference() and not p.requires_grad for p in view)
        names = select_parameters(denoiser.net, "cross_attn_kv")
        params = dict(denoiser.net.named_parameters())
        with torch.device("meta"):  # what the trainer allocates for the deltas, without allocating it
            deltas = WeightDeltas({n: params[n].detach().to("meta") for n in names})
        delta_bytes = sum(p.numel() * 4 for p in deltas.parameters())
        trained_bytes = sum(params[n].numel() * 2 for n in names)
        assert delta_bytes == 2 * trained_bytes and trained_bytes < 0.2 * size  # K/V: 9 % (SD1.5), 13 % (SDXL)
    finally:
        denoiser.release()


def test_gradient_checkpointing_wraps_the_host_unets_layers(pack_nodes, sd15_model, sd15_clip):
    from unlearn_core.injection import checkpointed

    adapter = next(m for n, m in sys.modules.items() if n.endswith(".nodes.comfy_adapter"))
    with torch.inference_mode():
        denoiser = adapter.ComfyDenoiser(sd15_model, sd15_clip)

    def saved_bytes(blocks: list[str]) -> int:
        total = []
        with torch.inference_mode(False), torch.enable_grad(), adapter.training_compatible():
            cond = denoiser.encode_prompts(["a red circle"], (128, 128))
            x = torch.randn(1, 4, 16, 16, requires_grad=True)
            with checkpointed(denoiser.net, blocks), torch.autograd.graph.saved_tensors_hooks(
                    lambda t: total.append(t.numel() * t.element_size()) or t, lambda t: t):
                denoiser(x, torch.tensor([500]), cond).square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        return sum(total)

    try:
        plain, ckpt = saved_bytes([]), saved_bytes(denoiser.checkpoint_blocks())
    finally:
        denoiser.release()
    assert ckpt < 0.5 * plain, f"activations saved for backward: {ckpt} bytes with checkpointing, {plain} without"
