"""Flux- and SD3-architecture MODELs built with the host ComfyUI's own classes (hosts from mid-2024 on).

- ``build_dit("Flux")`` / ``("FluxSchnell")`` / ``("SD3")``: ComfyUI's model classes (``supported_models``,
  ``model_base``, ``comfy.ldm``) at a small width, weights set by ``tiny_comfy.init_weights``. The released
  sizes come from the same function with ``full=True`` on the meta device (names and shapes only).
- ``write_sd3_file``: an SD3 diffusion-model file that the stock UNETLoader's model detection reads as
  SD3 (its detection takes the width from the file: 64 per block). Flux's detection fixes the width at
  3072, so no small Flux file exists; the in-process models are built from the class instead.
- :class:`StandInFluxClip` / :class:`StandInSD3Clip`: STAND-INS for the T5-XXL (4.7B parameters) + CLIP
  text encoders, far too large for CI. Same interface as ComfyUI's CLIP for what the pack calls
  (tokenize, encode_from_tokens): a context and a pooled vector of the model's widths, deterministic per
  prompt. Everything else (the network, its schedule, the LoRA loader) is the host's real code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tiny_comfy import init_weights

FLUX_SMALL = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=768, context_in_dim=64,
                  hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12],
                  theta=10000, qkv_bias=True, guidance_embed=True)
FLUX_DEV = dict(FLUX_SMALL, context_in_dim=4096, hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38,
                axes_dim=[16, 56, 56])
SD3_SMALL = dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=64,
                 context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}},
                 num_patches=1024, pos_embed_max_size=32, pos_embed_scaling_factor=None)
# SD3.5-large, as the host's detection reads it from the released file
SD35_LARGE = dict(SD3_SMALL, depth=38, adm_in_channels=2048, num_patches=36864, pos_embed_max_size=192,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": 4096, "out_features": 2432}}, qk_norm="rms")
CONFIGS = {"Flux": (FLUX_SMALL, FLUX_DEV), "FluxSchnell": (dict(FLUX_SMALL, guidance_embed=False),
                                                         dict(FLUX_DEV, guidance_embed=False)),
           "SD3": (SD3_SMALL, SD35_LARGE)}


def build_dit(family: str = "Flux", seed: int = 0, full: bool = False, device: str = "cpu",
              weight_dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype | None = None, **sizes):
    """A ComfyUI BaseModel of ``family`` (a class of comfy.supported_models) with small (or released-size) weights.

    ``weight_dtype`` float8 with a ``compute_dtype`` builds the model as the host's loader does for an fp8
    file (manual-cast layers); ``sizes`` overrides the configuration (e.g. ``depth=1``).
    """
    import comfy.supported_models as sm

    small, released = CONFIGS[family]
    unet_config = dict(released if full else small, **sizes)
    if compute_dtype is not None:
        unet_config["dtype"] = weight_dtype  # what the host's loader records: the layers then cast per forward
    config = getattr(sm, family)(unet_config)
    config.set_inference_dtype(weight_dtype, compute_dtype)
    with torch.device(device):
        model = config.get_model({}, "")
    if device != "meta":
        init_weights(model.diffusion_model, seed)
        for buffer in model.diffusion_model.buffers():  # SD3's position embedding is created uninitialised
            buffer.copy_(0.02 * torch.randn(buffer.shape, generator=torch.Generator().manual_seed(seed)))
    return model


def build_dit_patcher(family: str = "Flux", seed: int = 0):
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(build_dit(family, seed), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def write_flux_file(path: Path, seed: int = 0) -> Path:
    """A Flux-dev file the stock UNETLoader detects as Flux: the released width (3072, which the host's
    detection assumes) with one double and one single block, fp8 like the files 24 GB cards load (~0.5 GB)."""
    model = build_dit("Flux", seed, full=True, depth=1, depth_single_blocks=1)
    save_file({k: v.to(torch.float8_e4m3fn).contiguous() for k, v in model.diffusion_model.state_dict().items()},
              str(path))
    return path


def write_sd3_file(path: Path, seed: int = 0) -> Path:
    """An SD3 diffusion-model file (the host's key names, fp16) that the stock UNETLoader detects as SD3."""
    model = build_dit("SD3", seed)
    save_file({k: v.half().contiguous() for k, v in model.diffusion_model.state_dict().items()}, str(path))
    return path


class _StandInClip:
    context_dim: int
    pooled_dim: int

    def __init__(self, context_dim: int | None = None, pooled_dim: int | None = None):
        self.context_dim = context_dim or self.context_dim
        self.pooled_dim = pooled_dim or self.pooled_dim

    def tokenize(self, text: str):
        return text

    def encode_from_tokens(self, tokens, return_pooled: bool = False):
        gen = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(tokens)) % (2**31))
        cond = torch.randn(1, 16, self.context_dim, generator=gen)
        pooled = torch.randn(1, self.pooled_dim, generator=gen)
        return (cond, pooled) if return_pooled else cond


class StandInFluxClip(_StandInClip):
    """STAND-IN for Flux's T5-XXL + CLIP-L (see the module docstring): [1, 16, 64] context (4096 for the
    released width), [1, 768] pooled."""

    context_dim, pooled_dim = FLUX_SMALL["context_in_dim"], FLUX_SMALL["vec_in_dim"]


class StandInSD3Clip(_StandInClip):
    """STAND-IN for SD3's T5-XXL + CLIP-L + CLIP-G (see the module docstring): [1, 16, 64] context, [1, 64] pooled."""

    context_dim, pooled_dim = 64, SD3_SMALL["adm_in_channels"]
