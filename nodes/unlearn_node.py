"""Divergence Unlearn (α): train the erasure on the host's own model and return the erased MODEL."""

from __future__ import annotations

import torch

from ..unlearn_core.config import LEGACY_PRECISIONS, PRECISIONS, EraseConfig
from ..unlearn_core.settings import config_from_inputs
from ..unlearn_core.trainer import Eraser
from .comfy_adapter import apply_erasure, training_view
from .host import CONCEPT_SET, ERASURE, io, shown
from .images import to_image_tensor
from .progress import TrainingProgress, loss_chart
from .widgets import setting_inputs


class DivergenceUnlearn(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DivergenceUnlearn", display_name="Divergence Unlearn (α)", category="unlearning",
            description=(
                "Erase the concepts of a concept set from the model by f-divergence unlearning (Novello et al. "
                "2025): the model's prediction for each target prompt is pulled onto the original model's "
                "prediction for its anchor. Returns the erased model (the input model is untouched), the "
                "erasure for Save Erasure / Apply Erased UNet, and a chart of the loss and gradient norm."),
            inputs=[
                io.Model.Input("model", tooltip="The model to erase from (SD1.x, SD2.x or SDXL UNet)."),
                io.Clip.Input("clip", tooltip="The model's text encoder, used to encode the prompts."),
                CONCEPT_SET.Input("concepts", tooltip="From Load Concept Set."),
                *setting_inputs(EraseConfig),
                io.Latent.Input("latents", optional=True,
                                tooltip="Your own images of the concept (x_source = latents)."),
                *setting_inputs(EraseConfig, optional=True),  # after the saved widget order: see settings.py
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The erased model (a clone of the input with weight "
                                                              "patches)."),
                ERASURE.Output(display_name="erasure", tooltip="The erasure: weight updates plus metadata."),
                io.Image.Output(display_name="loss_chart", tooltip="Loss, S and gradient norm over the steps."),
            ],
        )

    @classmethod
    def validate_inputs(cls, precision: str):
        """Accept the precision names of saved workflows (fp32, bf16, fp16) besides the listed ones."""
        if precision in PRECISIONS or precision in LEGACY_PRECISIONS:
            return True
        return f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"

    @classmethod
    def execute(cls, model, clip, concepts, latents=None, **settings) -> io.NodeOutput:
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
        chart = to_image_tensor(loss_chart(progress.history, title if meta.capped else f"{title}: {meta.stopped}",
                                           warning=meta.stopped if meta.capped else ""))
        return io.NodeOutput(apply_erasure(model, erasure, 1.0), erasure, chart, ui=shown(cls, image=chart))
