"""Tiny models built with the host ComfyUI's own classes, and checkpoints its stock loaders read.

- A slim SD1.5-family UNet (model_channels 320, context 768, one level: ~26M parameters) that
  ComfyUI's model detection classifies as SD15, and its v-prediction twin (SD2.x-style schedule).
- An SDXL-family UNet (Segmind Vega depths) for the ``y`` conditioning path, with a stand-in for
  SDXL's two text encoders (see :class:`StandInSDXLClip`).
- A full-size CLIP-L text encoder with random weights (layer weights normal with std 0.05), which
  ComfyUI's stock loader builds from the checkpoint. Its causal attention mixes each prompt into the
  later tokens, as a trained CLIP does. (With zero layer weights every layer is an identity and prompts
  differ only at their own few tokens; erasures then barely generalise beyond the training latents.)

ComfyUI's layers are created uninitialised, so every tensor is set explicitly: norm scales 1,
biases 0, other weights fan-in scaled normal (the UNet's output is then O(1) and responds to every
weight patch).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

SD15_TINY = dict(image_size=32, use_checkpoint=False, use_spatial_transformer=True, legacy=False, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1], channel_mult=[1],
                 transformer_depth=[1], transformer_depth_output=[1, 1], transformer_depth_middle=1,
                 context_dim=768, use_linear_in_transformer=False, adm_in_channels=None,
                 use_temporal_attention=False)
SDXL_TINY = dict(image_size=32, use_checkpoint=False, use_spatial_transformer=True, legacy=False, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2], channel_mult=[1, 1, 1],
                 transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
                 transformer_depth_middle=2, context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential",
                 use_temporal_attention=False)

# the released models' UNet configurations, as ComfyUI's model detection reads them from a checkpoint
SD15_FULL = dict(SD15_TINY, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], num_heads=8,
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
SDXL_FULL = dict(SDXL_TINY, channel_mult=[1, 2, 4], num_head_channels=64, transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10)


@torch.no_grad()
def init_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Norm scales 1, biases 0, every other tensor normal / sqrt(fan_in) (deterministic for ``seed``)."""
    device = next(module.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif p.dim() == 1:
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen, device=device) / math.sqrt(math.prod(p.shape[1:])))


def build_unet(family: str = "SD15", seed: int = 0, model_channels: int = 320, v_prediction: bool = False,
               full: bool = False, device: str = "cpu"):
    """A ComfyUI BaseModel of the given family class (from comfy.supported_models) with tiny weights.

    ``model_channels`` 320 is what file detection needs; in-process tests use fewer for speed.
    ``v_prediction`` builds the same network as a v-prediction model (as SD2.x-768 is).
    ``full`` builds the released model's size instead (random weights, made on ``device``).
    """
    import comfy.model_base
    import comfy.supported_models as sm

    config_cls = getattr(sm, family)
    sdxl = family in ("SDXL", "Segmind_Vega")
    unet_config = (dict(SDXL_FULL if sdxl else SD15_FULL) if full
                   else dict(SDXL_TINY if sdxl else SD15_TINY, model_channels=model_channels))
    config = config_cls(unet_config)
    config.set_inference_dtype(torch.float32, None)
    with torch.device(device):
        if v_prediction:
            model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION)
        else:
            model = config.get_model({}, "")
    init_weights(model.diffusion_model, seed)
    return model


def build_patcher(family: str = "SD15", seed: int = 0, model_channels: int = 320, v_prediction: bool = False):
    import comfy.model_patcher

    model = build_unet(family, seed, model_channels, v_prediction)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


class StandInSDXLClip:
    """STAND-IN for SDXL's text encoders (CLIP-L + CLIP-G, ~820M parameters: too large to write and load
    in CI). Same interface as ComfyUI's CLIP for what the pack calls (tokenize, encode_from_tokens):
    a [1, 77, 2048] context and a [1, 1280] pooled vector, deterministic per prompt. The UNet, its
    ``y``/ADM conditioning and everything downstream are ComfyUI's real classes."""

    def tokenize(self, text: str):
        return text

    def encode_from_tokens(self, tokens, return_pooled: bool = False):
        gen = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(tokens)) % (2**31))
        cond = torch.randn(1, 77, 2048, generator=gen)
        pooled = torch.randn(1, 1280, generator=gen)
        return (cond, pooled) if return_pooled else cond


def clip_l_state_dict(seed: int = 0, prefix: str = "cond_stage_model.transformer.text_model.") -> dict:
    """CLIP-L text encoder tensors (fp16): random embeddings and layer weights, norms 1, biases 0."""
    gen = torch.Generator().manual_seed(seed)
    d, ff, layers = 768, 3072, 12

    def normal(*shape: int, std: float = 0.05) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).half()

    sd = {
        prefix + "embeddings.token_embedding.weight": normal(49408, d, std=0.5),
        prefix + "embeddings.position_embedding.weight": normal(77, d),
        prefix + "final_layer_norm.weight": torch.ones(d, dtype=torch.half),
        prefix + "final_layer_norm.bias": torch.zeros(d, dtype=torch.half),
    }
    for i in range(layers):
        p = f"{prefix}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"] = normal(d, d)
            sd[p + f"self_attn.{proj}.bias"] = torch.zeros(d, dtype=torch.half)
        for norm in ("layer_norm1", "layer_norm2"):
            sd[p + f"{norm}.weight"] = torch.ones(d, dtype=torch.half)
            sd[p + f"{norm}.bias"] = torch.zeros(d, dtype=torch.half)
        sd[p + "mlp.fc1.weight"] = normal(ff, d)
        sd[p + "mlp.fc1.bias"] = torch.zeros(ff, dtype=torch.half)
        sd[p + "mlp.fc2.weight"] = normal(d, ff)
        sd[p + "mlp.fc2.bias"] = torch.zeros(d, dtype=torch.half)
    return sd


def write_sd15_checkpoint(path: Path, seed: int = 0, with_clip: bool = True, full: bool = False,
                          device: str = "cpu") -> Path:
    """A tiny (or ``full``-size) SD15 checkpoint (UNet, optionally the random CLIP-L) that CheckpointLoaderSimple loads."""
    model = build_unet("SD15", seed, full=full, device=device)
    sd = {"model.diffusion_model." + k: v.half().cpu() for k, v in model.diffusion_model.state_dict().items()}
    if with_clip:
        sd.update({k: v.contiguous() for k, v in clip_l_state_dict(seed).items()})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def write_unet_file(path: Path, family: str = "SDXL", seed: int = 0, full: bool = False, device: str = "cpu") -> Path:
    """A UNet-only fp16 file (the host's own key names) that the stock UNETLoader loads from models/unet."""
    model = build_unet(family, seed, full=full, device=device)
    save_file({k: v.half().cpu().contiguous() for k, v in model.diffusion_model.state_dict().items()}, str(path))
    return path
