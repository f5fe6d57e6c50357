"""Divergence Unlearn (α): train the erasure on the host's own model and return the erased MODEL."""

from __future__ import annotations

import torch

from ..unlearn_core.settings import config_from_inputs, node_inputs
from ..unlearn_core.config import LEGACY_PRECISIONS, PRECISIONS, EraseConfig
from ..unlearn_core.trainer import Eraser
from .comfy_adapter import apply_erasure, training_view
from .images import to_image_tensor
from .progress import TrainingProgress, loss_chart


class DivergenceUnlearn:
    DESCRIPTION = ("Erase the concepts of a concept set from the model by f-divergence unlearning (Novello et al. "
                   "2025): the model's prediction for each target prompt is pulled onto the original model's "
                   "prediction for its anchor. Returns the erased model (the input model is untouched), the "
                   "erasure for Save Erasure / Apply Erased UNet, and a chart of the loss and gradient norm.")
    CATEGORY = "unlearning"
    RETURN_TYPES = ("MODEL", "ERASURE", "IMAGE")
    RETURN_NAMES = ("model", "erasure", "loss_chart")
    OUTPUT_TOOLTIPS = ("The erased model (a clone of the input with weight patches).",
                       "The erasure: weight updates plus metadata.", "Loss, S and gradient norm over the steps.")
    FUNCTION = "unlearn"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to erase from (SD1.x, SD2.x or SDXL UNet)."}),
                "clip": ("CLIP", {"tooltip": "The model's text encoder, used to encode the prompts."}),
                "concepts": ("CONCEPT_SET", {"tooltip": "From Load Concept Set."}),
                **node_inputs(EraseConfig),
            },
            "optional": {
                "latents": ("LATENT", {"tooltip": "Your own images of the concept (x_source = latents)."}),
                **node_inputs(EraseConfig, optional=True),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, precision):
        """Accept the precision names of saved workflows (fp32, bf16, fp16) besides the listed ones."""
        if precision in PRECISIONS or precision in LEGACY_PRECISIONS:
            return True
        return f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"

    def unlearn(self, model, clip, concepts, latents=None, **settings):
        config = config_from_inputs(EraseConfig, settings)
        user_latents = None
        if latents is not None:
            with torch.inference_mode(False):
                user_latents = model.model.process_latent_in(latents["samples"].clone().float())
        progress = TrainingProgress(f"{config.divergence} erasure")
        with training_view(model, clip) as denoiser:
            erasure = Eraser(denoiser, concepts, config, user_latents, callback=progress).run()
        meta = erasure.metadata
        print(f"[Divergence Unlearn] done in {meta.seconds:.1f} s: {meta.stopped}; erase_mode "
              f"{config.erase_mode}; keep projection: {meta.keep_projection.note}")
        title = f"{config.erase_mode} {config.divergence}, {progress.history[-1].step} steps, {meta.seconds:.1f} s"
        chart = loss_chart(progress.history, title if meta.capped else f"{title}: {meta.stopped}",
                           warning=meta.stopped if meta.capped else "")
        return (apply_erasure(model, erasure, 1.0), erasure, to_image_tensor(chart))

