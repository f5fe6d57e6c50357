"""Erasures in other shapes: low-rank factors for the ComfyUI file, and a diffusers (PEFT) LoRA state dict.

A full delta ``D`` [out, in] becomes ``up @ down`` from its SVD, ``up = U_r sqrt(S_r)`` and
``down = sqrt(S_r) V_r^T``, truncated at the numerical rank (the dropped singular values weigh no more
than float32 rounding of ``D``) or at a smaller rank the caller asks for, with the relative Frobenius
error ``||D - up @ down||_F / ||D||_F``.

diffusers (0.42) reads ``unet.<module path>.lora_A.weight`` [r, in] and ``.lora_B.weight`` [out, r];
without alphas in the state dict it sets PEFT's ``lora_alpha`` equal to each module's rank, so
``W = W0 + lora_B @ lora_A`` with scale 1. Our own ``alpha / rank`` is therefore folded into ``lora_B``.

Erasures of Flux and SD3 (trained in ComfyUI, so with the host's names) export to diffusers'
``transformer.<module path>`` names: the fused ``qkv`` of a stream becomes diffusers' three projections
(rows q, k, v; the LoRA's ``down`` is shared). diffusers' Flux loader also reads the ComfyUI file itself.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace

import torch
from torch import Tensor

from .erasure import Erasure, ErasureError


def numerical_rank(singular_values: Tensor) -> int:
    """The smallest rank whose dropped singular values have a norm within float32 rounding (eps * ||D||_F)."""
    tails = singular_values.double().flip(0).square().cumsum(0).flip(0).sqrt()  # tails[i] = ||s[i:]||
    if tails.numel() == 0 or tails[0] == 0:
        return 0
    return int((tails > torch.finfo(torch.float32).eps * tails[0]).sum())


def factorise(delta: Tensor, rank: int | None = None) -> tuple[Tensor, Tensor, float]:
    """(up [out, r], down [r, in], relative Frobenius error) of a 2-D ``delta``, r = min(rank, numerical rank)."""
    d = delta.detach().double().cpu()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    r = max(1, numerical_rank(s))
    if rank is not None:
        r = min(rank, r)
    root = s[:r].sqrt()
    up, down = (u[:, :r] * root).float(), (root[:, None] * vh[:r]).float()
    norm = torch.linalg.matrix_norm(d)
    error = torch.linalg.matrix_norm(d - up.double() @ down.double()) / norm if norm > 0 else torch.zeros(())
    return up, down, float(error)


def low_rank(erasure: Erasure, rank: int | None = None) -> tuple[Erasure, dict[str, float]]:
    """The erasure with every full delta of two or more dimensions as LoRA factors (``alpha = rank``, scale 1),
    and each converted tensor's relative Frobenius error.

    ``rank=None`` keeps each tensor's numerical rank (exact); an int caps it. 1-D deltas (biases, norms)
    stay full, and tensors that were already trained as LoRA pass through unchanged. The result saves
    to the same ComfyUI file format (``lora_up``/``lora_down``/``alpha`` keys).
    """
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be at least 1 (or None for each tensor's exact numerical rank), got {rank}")
    out = Erasure(lora=dict(erasure.lora), shapes=dict(erasure.shapes), metadata=replace(erasure.metadata))
    errors: dict[str, float] = {}
    for name, delta in erasure.full.items():
        if delta.dim() < 2:
            out.full[name] = delta
            continue
        up, down, errors[name] = factorise(delta.reshape(delta.shape[0], -1), rank)
        out.lora[name] = (up, down, float(up.shape[1]))
    out.metadata.low_rank = {"rank": rank, "max_relative_error": max(errors.values(), default=0.0)}
    return out, errors


# ComfyUI's name of a Flux / SD3 linear layer -> diffusers' module(s) (one per row chunk of a fused qkv)
TRANSFORMER_MODULES = [
    (r"(?:double_blocks|joint_blocks)\.(\d+)\.(?:txt_attn|context_block\.attn)\.qkv",
     ["transformer_blocks.{0}.attn.add_q_proj", "transformer_blocks.{0}.attn.add_k_proj",
      "transformer_blocks.{0}.attn.add_v_proj"]),
    (r"(?:double_blocks|joint_blocks)\.(\d+)\.(?:img_attn|x_block\.attn)\.qkv",
     ["transformer_blocks.{0}.attn.to_q", "transformer_blocks.{0}.attn.to_k", "transformer_blocks.{0}.attn.to_v"]),
    (r"(?:double_blocks|joint_blocks)\.(\d+)\.(?:txt_attn|context_block\.attn)\.proj",
     ["transformer_blocks.{0}.attn.to_add_out"]),
    (r"(?:double_blocks|joint_blocks)\.(\d+)\.(?:img_attn|x_block\.attn)\.proj",
     ["transformer_blocks.{0}.attn.to_out.0"]),
    (r"(?:txt_in|context_embedder)", ["context_embedder"]),
]


def diffusers_modules(erasure: Erasure, name: str) -> list[str] | None:
    """The diffusers modules (with the pipeline's ``unet.`` / ``transformer.`` prefix) a linear weight ``name``
    maps to, one per row chunk; None where diffusers has no such linear layer."""
    if not (name.endswith(".weight") and len(erasure.shapes[name]) == 2):
        return None
    stem = name[: -len(".weight")]
    if erasure.metadata.key_format == "diffusers":
        return ["unet." + stem]
    for pattern, modules in TRANSFORMER_MODULES:
        if match := re.fullmatch(pattern, stem):
            return ["transformer." + m.format(*match.groups()) for m in modules]
    return None


def unsupported_tensors(erasure: Erasure) -> list[str]:
    """Names a diffusers LoRA cannot carry: everything but linear weights diffusers has a module for."""
    return [n for n in erasure.names if diffusers_modules(erasure, n) is None]


def to_diffusers_lora(erasure: Erasure, skip_unsupported: bool = False) -> dict[str, Tensor]:
    """A state dict that ``StableDiffusionPipeline.load_lora_weights`` (or the SDXL, Flux or SD3 one) loads.

    Full deltas are factorised exactly (numerical rank); for a smaller LoRA pass ``low_rank(erasure, r)[0]``,
    whose second value holds the approximation errors. Tensors other than linear weights raise
    :class:`ErasureError` naming them, unless ``skip_unsupported`` (then a warning names what was left out).
    """
    if erasure.metadata.family not in ("Flux", "FluxSchnell", "SD3", "SD35"):
        erasure.require_key_format("diffusers")
    skipped = unsupported_tensors(erasure)
    if skipped and not skip_unsupported:
        raise ErasureError(
            f"a diffusers LoRA carries linear weights only, and this erasure also updates {len(skipped)} other "
            f"tensors ({_listing(skipped)}): train with a parameter set of linear weights only (cross_attn_kv), "
            "or pass skip_unsupported=True to export without them")
    if skipped:
        warnings.warn(f"left out of the diffusers LoRA ({len(skipped)} tensors, so it is not the whole erasure): "
                      f"{_listing(skipped)}", stacklevel=2)
    left_out = set(skipped)
    state: dict[str, Tensor] = {}
    for name in (n for n in erasure.names if n not in left_out):
        modules = diffusers_modules(erasure, name)
        if name in erasure.lora:
            up, down, alpha = erasure.lora[name]
            factors = [(chunk * (alpha / up.shape[1]), down) for chunk in up.float().chunk(len(modules))]
        else:
            factors = [factorise(chunk)[:2] for chunk in erasure.full[name].chunk(len(modules))]
        for module, (up, down) in zip(modules, factors):
            state[module + ".lora_A.weight"] = down.float().contiguous()
            state[module + ".lora_B.weight"] = up.float().contiguous()
    return state


def _listing(names: list[str], shown: int = 4) -> str:
    """The first few names, then how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
