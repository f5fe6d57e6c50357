"""Write the demo's ComfyUI checkpoint from the small shipped parts (deterministic: no random numbers).

One SD1.5-format file holds the inflated UNet (``model.diffusion_model.*``), CLIP-L with identity
layers (``cond_stage_model.*``; for the contextual shapes model, ``weights_clip_shapes``, its first layers are the
encoder's, inflated: :mod:`unlearn_demo.clip_text`) and the inflated TAESD (``first_stage_model.taesd_*``), so ComfyUI's
stock Load Checkpoint gives MODEL, CLIP and VAE. Every tensor is fp16; the shipped parts are stored
fp16-exact, so the file computes what :class:`~unlearn_demo.model.DemoModel` computes.

    python -m unlearn_demo assemble --out ComfyUI/models/checkpoints/
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from unlearn_core.atomic_write import write_atomically

from .model import CLIP_SHAPES_WEIGHTS, WEIGHTS, DemoModel
from .slim_unet import to_ldm
from .text import clip_l_state_dict
from .tiny_vae import inflate

CHECKPOINT_NAME = "divergence_unlearn_demo_shapes.safetensors"
CLIP_SHAPES_CHECKPOINT_NAME = "divergence_unlearn_demo_clip_shapes.safetensors"  # the shapes with a contextual CLIP
NAMES = {WEIGHTS: (CHECKPOINT_NAME, "Divergence Unlearn demo (procedural shapes)"),
         CLIP_SHAPES_WEIGHTS: (CLIP_SHAPES_CHECKPOINT_NAME,
                               "Divergence Unlearn demo (procedural shapes, contextual CLIP-L layers)")}
SD_LATENT_SCALE = 0.18215  # ComfyUI's SD1.5 latent format: the UNet sees VAE latents times this


def checkpoint_state_dict(folder: Path = WEIGHTS) -> dict[str, torch.Tensor]:
    model = DemoModel.load(folder)
    sd = to_ldm(model.unet.state_dict(), model.unet.config)
    sd.update(clip_l_state_dict(model.words.token_embedding(), model.words.clip_l_layers()))
    sd.update({"first_stage_model." + k: v for k, v in inflate(model.autoencoder.state_dict()).items()})
    sd = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
    # TAESD divides encoder output by vae_scale; with 0.18215·std the UNet sees unit-variance latents.
    sd["first_stage_model.vae_scale"] = torch.tensor(SD_LATENT_SCALE * model.latent_std, dtype=torch.float32)
    return sd


def write_checkpoint(out: str | os.PathLike, folder: Path = WEIGHTS) -> Path:
    """Write the checkpoint of the parts in ``folder`` to ``out`` (a file, or a folder to put its name from NAMES in),
    atomically; return its path."""
    name, title = NAMES.get(Path(folder), (CHECKPOINT_NAME, NAMES[WEIGHTS][1]))
    path = Path(out)
    if path.is_dir() or not path.suffix:
        path = path / name
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: the checkpoint is written as .safetensors; give a folder or a .safetensors name")
    metadata = {"modelspec.title": title, "modelspec.architecture": "stable-diffusion-v1",
                "divergence_unlearn.demo": "1"}
    return write_atomically(path, lambda tmp: save_file(checkpoint_state_dict(folder), tmp, metadata=metadata))
