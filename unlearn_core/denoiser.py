"""The host-agnostic interface the trainer sees: a denoiser, its noise schedule and its prompt encoder.

Adapters (``unlearn_core.adapters.diffusers_sd``, ``nodes.comfy_adapter``) subclass :class:`Denoiser`.
Everything is in DDPM terms: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with integer timesteps
``t`` in ``[0, T)`` indexing ``alphas_cumprod``, and the network returns epsilon, v or a flow velocity
according to ``prediction_type``. A flow-matching adapter states its schedule as the ``abar`` with the
same signal-to-noise ratio and converts x_t itself (``schedule.flow_coordinates``); see docs/flow_models.md.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from .architectures import ARCHITECTURES

Conditioning = Dict[str, Tensor]
"""Batch-first tensors the network needs besides x_t and t, e.g. ``{"context": [B, 77, 768]}``."""

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")


class Denoiser(nn.Module):
    """A noise-prediction network ``net`` plus what the trainer needs to drive it.

    Trained tensors are named by their path inside ``net`` (``net.named_parameters()``); the trainer
    serves them through :class:`unlearn_core.injection.DeltaInjection`, and ``net`` is unchanged afterwards.
    """

    net: nn.Module
    prediction_type: str
    alphas_cumprod: Tensor  # [T], float32, on CPU
    latent_channels: int
    latent_downscale: int = 8  # image pixels per latent pixel
    family: str  # "sd1", "sd2", "sdxl", ...: names the model in errors and in erasure metadata
    architecture: str = "unet"  # a key of ``architectures.ARCHITECTURES``: how the network's tensors are named
    guidance_distilled: bool = False  # guidance is an input of the network (Flux-dev): sample without CFG
    key_format: str  # how ``net``'s parameter names are spelled: "diffusers" or "ldm"
    data_range: tuple[float, float] | None = None  # x0's known range (pixel-space models); None for latents

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        """Model output (epsilon or v) for noisy latents ``x_t`` [B, C, H, W] at integer ``timesteps`` [B]."""
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str], size: tuple[int, int]) -> Conditioning:
        """Conditioning for ``prompts`` at image ``size`` (height, width in pixels)."""
        raise NotImplementedError

    def word_embedding(self, word: str) -> Tensor:
        """The text encoder's input embedding of ``word`` (where textual inversion starts); hosts whose text encoder
        the engine cannot differentiate raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__}'s text encoder takes no learnt word")

    def encode_with_word(self, prompts: list[str], word: str, vector: Tensor, size: tuple[int, int]) -> Conditioning:
        """Conditioning of ``prompts`` in which ``word`` is a new token with input embedding ``vector``,
        differentiable in ``vector`` (textual inversion)."""
        raise NotImplementedError(f"{type(self).__name__}'s text encoder takes no learnt word")

    def checkpoint_blocks(self) -> list[str]:
        """Names (inside ``net``) of the blocks that gradient checkpointing recomputes in backward: by default
        every block of the architecture's block lists (``architectures.Architecture.checkpoint_lists``)."""
        lists = ARCHITECTURES[self.architecture].checkpoint_lists
        if not lists:
            raise NotImplementedError(f"{type(self).__name__} names no blocks to checkpoint")
        return [f"{name}.{i}" for name in lists for i in range(len(self.net.get_submodule(name)))]

    @property
    def device(self) -> torch.device:
        return self._first_parameter().device

    @property
    def dtype(self) -> torch.dtype:
        return self._first_parameter().dtype

    def _first_parameter(self) -> Tensor:
        """A parameter of ``net``, or the one seen last where a DeltaInjection of every parameter (parameter set
        ``full``) has made them plain attributes for its duration."""
        param = next(self.net.parameters(), None)
        if param is not None:
            self.__dict__["_seen_parameter"] = param
        return self.__dict__["_seen_parameter"]


def cat_cond(conds: list[Conditioning]) -> Conditioning:
    """Concatenate conditionings along the batch dimension."""
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


def index_cond(cond: Conditioning, index: Tensor) -> Conditioning:
    """Rows ``index`` of every conditioning tensor."""
    return {k: v[index.to(v.device)] for k, v in cond.items()}
