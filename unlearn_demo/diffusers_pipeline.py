"""The demo model as a diffusers StableDiffusionPipeline, converted from the ComfyUI checkpoint by diffusers' own code.

The UNet and CLIP go through ``diffusers.loaders.single_file_utils`` (what ``from_single_file`` uses,
here with local configs because nothing can be downloaded); TAESD becomes diffusers' ``AutoencoderTiny``,
whose layer lists are TAESD's (the decoder's leading clamp is not a layer there). The tokenizer is
CLIP's, read from ``tokenizer_dir`` (default: the ComfyUI host's copy).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .model import WEIGHTS
from .slim_unet import CONTEXT_DIM, MODEL_CHANNELS

UNET_CONFIG = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "down_block_types": ["CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D"], "block_out_channels": [MODEL_CHANNELS], "layers_per_block": 1,
    "cross_attention_dim": CONTEXT_DIM, "attention_head_dim": 8, "use_linear_projection": False,
}


def _taesd_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``taesd_encoder.N.*`` -> ``encoder.layers.N.*``; ``taesd_decoder.N.*`` -> ``decoder.layers.(N-1).*``."""
    out = {}
    for key, value in sd.items():
        part, index, rest = key.split(".", 2)
        if part == "taesd_encoder":
            out[f"encoder.layers.{index}.{rest}"] = value
        elif part == "taesd_decoder":
            out[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    return out


def demo_unet(ckpt: dict[str, torch.Tensor] | None = None, folder: Path = WEIGHTS):
    """The demo UNet as a diffusers UNet2DConditionModel (320 channels, 26M parameters), fp32."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from .assemble import checkpoint_state_dict

    ckpt = ckpt or {k: v.float() for k, v in checkpoint_state_dict(folder).items()}
    unet = UNet2DConditionModel(**UNET_CONFIG)
    unet.load_state_dict(convert_ldm_unet_checkpoint(ckpt, unet.config))
    return unet


def demo_pipeline(tokenizer_dir: str | os.PathLike | None = None, folder: Path = WEIGHTS):
    """A StableDiffusionPipeline (fp32, CPU) computing what the demo checkpoint computes in ComfyUI."""
    from diffusers import AutoencoderTiny, DDIMScheduler, StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .assemble import checkpoint_state_dict
    from .train import default_tokenizer_dir

    ckpt = {k: v.float() for k, v in checkpoint_state_dict(folder).items()}
    unet = demo_unet(ckpt)

    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                                num_hidden_layers=12, max_position_embeddings=77,
                                                hidden_act="quick_gelu", projection_dim=768))
    clip_sd = convert_ldm_clip_checkpoint(ckpt)
    if not any(k.startswith("text_model.") for k in text_encoder.state_dict()):  # transformers >= 5 drops it
        clip_sd = {k.removeprefix("text_model."): v for k, v in clip_sd.items()}
    missing, unexpected = text_encoder.load_state_dict(clip_sd, strict=False)
    if [k for k in missing if not k.endswith("position_ids")] or unexpected:
        raise RuntimeError(f"CLIP conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")

    vae_scale = ckpt["first_stage_model.vae_scale"].item()
    vae = AutoencoderTiny(latent_channels=4, scaling_factor=0.18215 / vae_scale)
    vae.load_state_dict(_taesd_to_diffusers({k.removeprefix("first_stage_model."): v for k, v in ckpt.items()
                                             if k.startswith("first_stage_model.taesd_")}))

    tok_dir = Path(tokenizer_dir or default_tokenizer_dir())
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="<|endoftext|>",
                              model_max_length=77)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
