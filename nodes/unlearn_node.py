"""Divergence Unlearn (α): train the erasure on the host's own model and return the erased MODEL."""

from __future__ import annotations

import math

import torch

import comfy.model_management as mm
import comfy.utils

from ..unlearn_core.plot import line_chart
from ..unlearn_core.settings import config_from_inputs, node_inputs
from ..unlearn_core.trainer import EraseConfig, Eraser, StepInfo
from .comfy_adapter import ComfyDenoiser, apply_erasure, training_compatible
from .images import to_image_tensor

class _Progress:
    """ComfyUI progress bar per phase, loss in the console, and the Cancel button checked every step."""

    def __init__(self, log_every: int = 10):
        self.bars: dict[str, comfy.utils.ProgressBar] = {}
        self.log_every = log_every

    def __call__(self, info: StepInfo) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar = self.bars.setdefault(info.phase, comfy.utils.ProgressBar(info.total))
        bar.update_absolute(info.step, info.total)
        if info.phase == "training" and (info.step % self.log_every == 0 or info.step in (1, info.total)):
            keep = f" keep S {info.keep_s:.3g}" if math.isfinite(info.keep_s) else ""
            print(f"[Divergence Unlearn] step {info.step}/{info.total} loss {info.loss:.5g} "
                  f"S {info.mean_s:.3g} (sigma {info.sigma:.3g}, r = S/sigma² {info.ratio:.3g}){keep} "
                  f"|grad| {info.grad_norm:.3g}")


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

    def unlearn(self, model, clip, concepts, latents=None, **settings):
        config = config_from_inputs(EraseConfig, settings)
        user_latents = None
        if latents is not None:
            with torch.inference_mode(False):
                user_latents = model.model.process_latent_in(latents["samples"].clone().float())
        denoiser = ComfyDenoiser(model, clip)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                eraser = Eraser(denoiser, concepts, config, user_latents, callback=_Progress())
                probe = denoiser.encode_prompts([""], (config.resolution, config.resolution))
                with training_compatible(denoiser, probe):
                    erasure = eraser.run()
        finally:
            denoiser.release()
        meta = erasure.metadata
        print(f"[Divergence Unlearn] done in {meta['seconds']:.1f} s: {meta['stopped']}")
        history = meta["history"]
        chart = line_chart({"loss": [h[1] for h in history], "S (target vs frozen target)": [h[2] for h in history],
                            "gradient norm": [h[4] for h in history],
                            "moved onto anchor (checks)": [h[5] for h in history]},
                           f"{config.divergence}, {history[-1][0]} steps, {meta['seconds']:.1f} s: {meta['stopped']}")
        return (apply_erasure(model, erasure, 1.0), erasure, to_image_tensor(chart))
