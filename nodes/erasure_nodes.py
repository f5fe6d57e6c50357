"""Apply Erased UNet, Save Erasure and Erasure Report."""

from __future__ import annotations

import math
import os

import torch

import folder_paths

from ..unlearn_core.erasure import Erasure
from ..unlearn_core.plot import bar_chart
from ..unlearn_core.report import measure
from .comfy_adapter import ComfyDenoiser, apply_erasure, before_erasure
from .host import CONCEPT_SET, ERASURE, io, shown
from .images import to_image_tensor
from .paths import erasure_save_target

NONE = "none"


def original_model_inputs() -> list:
    """The inputs of the nodes that measure or attack an erasure on the model it was trained on."""
    return [io.Model.Input("model", tooltip="The model the erasure was trained on (the original), or the erased "
                                            "MODEL: its erasure's weight patches are taken off."),
            io.Clip.Input("clip", tooltip="Its text encoder.")]


class ApplyErasedUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DivergenceUnlearnApplyErasure", display_name="Apply Erased UNet", category="unlearning",
            description=("Apply an erasure to a model at a strength (0 gives the input model back, negative values "
                         "push the other way). Takes the ERASURE of Divergence Unlearn, or a file saved by Save "
                         "Erasure."),
            inputs=[
                io.Model.Input("model", tooltip="The model the erasure was trained on (same family)."),
                io.Float.Input("strength", default=1.0, min=-2.0, max=2.0, step=0.05,
                               tooltip="Scale of the weight updates."),
                io.Combo.Input("erasure_file", options=[NONE, *folder_paths.get_filename_list("loras")],
                               default=NONE, tooltip="An erasure saved by Save Erasure (in models/loras)."),
                ERASURE.Input("erasure", optional=True,
                              tooltip="An erasure from Divergence Unlearn (wins over the file)."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model with the erasure as weight patches.")],
        )

    @classmethod
    def execute(cls, model, strength: float, erasure_file: str, erasure=None) -> io.NodeOutput:
        if not math.isfinite(strength):
            raise ValueError(f"strength is {strength}: set the strength widget to a number from -2 to 2")
        if erasure is None:
            if erasure_file == NONE:
                raise ValueError("no erasure given: connect an ERASURE or pick an erasure_file")
            path = folder_paths.get_full_path("loras", erasure_file)
            if path is None:
                raise ValueError(f"erasure file {erasure_file!r} is not in the loras folder any more: pick another")
            erasure = Erasure.load(path)
        return io.NodeOutput(apply_erasure(model, erasure, strength))


class SaveErasure(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DivergenceUnlearnSaveErasure", display_name="Save Erasure", category="unlearning",
            description=("Save an erasure into models/loras as .safetensors. The file also loads with ComfyUI's "
                         "stock LoraLoaderModelOnly (same result as Apply Erased UNet) and never overwrites an "
                         "existing file."),
            inputs=[
                ERASURE.Input("erasure", tooltip="From Divergence Unlearn."),
                io.String.Input("filename_prefix", default="erasures/erasure",
                                tooltip="Sub-folder and name inside models/loras; a counter is added."),
            ],
            outputs=[], is_output_node=True,
        )

    @classmethod
    def execute(cls, erasure, filename_prefix: str) -> io.NodeOutput:
        path = erasure.save_numbered(*erasure_save_target(filename_prefix))
        root = folder_paths.get_folder_paths("loras")[0]
        print(f"[Divergence Unlearn] saved erasure to {path}")
        return io.NodeOutput(ui=shown(cls, text=os.path.relpath(path, root)))


class ErasureReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DivergenceUnlearnErasureReport", display_name="Erasure Report", category="unlearning",
            description=("Measure an erasure in prediction space on probes it never trained on (the original "
                         "model's own samples of each anchor, noised at mid timesteps): how far each target prompt "
                         "moved onto its anchor (100% = predicts like the anchor; anchor_guidance aims past it) and "
                         "how far the keep prompts drifted. How its numbers compare with a classifier: "
                         "benchmarks/results/erasure_report_agreement.md."),
            inputs=[
                *original_model_inputs(),
                ERASURE.Input("erasure", tooltip="The erasure to measure."),
                CONCEPT_SET.Input("concepts", tooltip="The prompts to measure (usually the erased set)."),
                io.Int.Input("resolution", default=512, min=32, max=2048, step=8,
                             tooltip="Image size in pixels of the probe latents."),
                io.Int.Input("probes", default=4, min=1, max=64,
                             tooltip="Probes per prompt pair (samples of its anchor, noised)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of the probe latents."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="The numbers as text."),
                     io.Image.Output(display_name="chart", tooltip="The same as a bar chart.")],
            is_output_node=True,  # runs (and shows its text) even when nothing consumes its outputs
        )

    @classmethod
    def execute(cls, model, clip, erasure, concepts, resolution: int, probes: int, seed: int) -> io.NodeOutput:
        model, erasure = before_erasure(model, erasure)
        denoiser = ComfyDenoiser(model, clip)
        try:
            with torch.inference_mode(False):
                result = measure(denoiser, erasure, concepts, resolution=resolution, probes=probes, seed=seed)
        finally:
            denoiser.release()
        bars = [(f"moved: {p['target']}", p["moved"]) for p in result.pairs]
        bars += [(f"drift: {k['prompt']}", k["drift"]) for k in result.keep]
        text = result.text()
        print(text)
        chart = to_image_tensor(bar_chart(bars, "Erasure report"))
        return io.NodeOutput(text, chart, ui=shown(cls, text=text, image=chart))
