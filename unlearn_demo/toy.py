"""A toy diffusers Stable Diffusion pipeline with random weights (no download), for demos and tests.

Real diffusers/transformers classes at toy sizes: a 2-level UNet2DConditionModel with cross-attention,
a 2-layer CLIPTextModel, a character-level CLIPTokenizer written to a temporary folder, a small
AutoencoderKL and the usual scaled-linear DDPM schedule; the SDXL variant adds a projected second text
encoder and the UNet's text-time conditioning.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _byte_chars() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_tokenizer(folder: Path):
    """A character-level CLIPTokenizer (no merges), max length 16."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _text_config(hidden_size: int, projection_dim: int = 512):
    """A 2-layer CLIP text config over the tiny tokenizer's vocabulary (16 tokens)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=514, hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, bos_token_id=512, eos_token_id=513, pad_token_id=513, projection_dim=projection_dim,
    )


def _unet(cross_attention_dim: int, **extra):
    """A 2-level UNet2DConditionModel with cross-attention in its first down and last up block."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=8, **extra,
    )


def _vae_and_scheduler(prediction_type: str):
    """A one-level AutoencoderKL and the Stable Diffusion DDIM schedule."""
    from diffusers import AutoencoderKL, DDIMScheduler

    vae = AutoencoderKL(block_out_channels=(16,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8, sample_size=16)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    return vae, scheduler


def tiny_pipeline(folder: Path, seed: int = 0, cross_attention_dim: int = 32, prediction_type: str = "epsilon"):
    """A StableDiffusionPipeline with toy-size random weights (deterministic for ``seed``)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = _unet(cross_attention_dim)
    text_encoder = CLIPTextModel(_text_config(cross_attention_dim))
    vae, scheduler = _vae_and_scheduler(prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(folder / "tok"),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(folder: Path, seed: int = 0, hidden_sizes: tuple[int, int] = (32, 32),
                       projection_dim: int = 32, time_embed_dim: int = 8):
    """A StableDiffusionXLPipeline with toy-size random weights: CLIP-L-like and CLIP-G-like (projected) text
    encoders, whose penultimate states concatenate to the UNet's context, and SDXL's text-time conditioning
    (pooled projection + 6 size/crop ids, each embedded in ``time_embed_dim``)."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = _unet(sum(hidden_sizes), addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
                 projection_class_embeddings_input_dim=projection_dim + 6 * time_embed_dim)
    text_encoder = CLIPTextModel(_text_config(hidden_sizes[0]))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(hidden_sizes[1], projection_dim))
    vae, scheduler = _vae_and_scheduler("epsilon")
    tokenizer = tiny_tokenizer(folder / "tok")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
