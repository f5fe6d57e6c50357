"""The demo's own ComfyUI node (not part of the node pack): Load Flow Demo Model.

The headless runner links this folder into the host's ``custom_nodes`` next to the pack. The flow demo
(:mod:`unlearn_demo.flow_model`) is a small rectified-flow transformer in Flux's layout; ComfyUI's Flux
detection fixes the width at 3072, so no checkpoint of it can go through Load Checkpoint. This node builds
ComfyUI's own Flux model around it instead: ``comfy.model_base.Flux`` (model type FLUX, ModelSamplingFlux
with shift 0, i.e. s = t, the grid the demo was trained on) with the demo's latent format (SD1.5's, as the
demo checkpoint's VAE encodes) in a ModelPatcher, so KSampler, LoRA loaders and the pack's nodes treat it as
any Flux MODEL. Text and VAE come from the demo checkpoint (the same word rows and autoencoder).
"""

from __future__ import annotations

import torch

from unlearn_demo.flow_model import HostFlowTransformer, transformer_weights


def flow_demo_model():
    """A ComfyUI ModelPatcher holding the flow demo as a Flux model; a clear error on a host without Flux."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models_base

    if not hasattr(comfy.model_base, "Flux"):
        raise RuntimeError("this ComfyUI predates Flux (added to ComfyUI in August 2024); the flow demo needs a "
                           "current ComfyUI: point COMFYUI_PATH at one")
    state, config = transformer_weights()

    class FlowDemoConfig(comfy.supported_models_base.BASE):
        unet_config: dict = {}
        unet_extra_config: dict = {}
        sampling_settings = {"shift": 0.0}  # ModelSamplingFlux: s = e^0 / (e^0 + 1/t - 1) = t
        latent_format = comfy.latent_formats.SD15
        supported_inference_dtypes = [torch.float32]

    base = comfy.model_base.Flux(FlowDemoConfig({**config, "in_channels": 4, "out_channels": 4}),
                                 unet_model=HostFlowTransformer)
    base.diffusion_model.load_state_dict(state)
    base.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


class LoadFlowDemoModel:
    """Load Flow Demo Model: the demo's small Flux-layout flow transformer as a ComfyUI Flux MODEL."""

    CATEGORY = "divergence_unlearn/demo"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    DESCRIPTION = ("The Divergence Unlearn demo's rectified-flow transformer (Flux layout, 64 px shapes) as a Flux "
                   "MODEL; use the demo checkpoint's CLIP and VAE with it.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {}}

    def load(self) -> tuple:
        return (flow_demo_model(),)


NODE_CLASS_MAPPINGS = {"UnlearnDemoLoadFlowModel": LoadFlowDemoModel}
NODE_DISPLAY_NAME_MAPPINGS = {"UnlearnDemoLoadFlowModel": "Load Flow Demo Model (Divergence Unlearn demo)"}
