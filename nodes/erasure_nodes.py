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
from .images import to_image_tensor
from .paths import erasure_save_target

NONE = "none"
# the inputs of the nodes that measure or attack an erasure on the model it was trained on
ORIGINAL_MODEL = {"model": ("MODEL", {"tooltip": "The model the erasure was trained on (the original), or the "
                                                "erased MODEL: its erasure's weight patches are taken off."}),
                  "clip": ("CLIP", {"tooltip": "Its text encoder."})}


class ApplyErasedUNet:
    DESCRIPTION = ("Apply an erasure to a model at a strength (0 gives the input model back, negative values "
                   "push the other way). Takes the ERASURE of Divergence Unlearn, or a file saved by Save Erasure.")
    CATEGORY = "unlearning"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A clone of the model with the erasure as weight patches.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model the erasure was trained on (same family)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "Scale of the weight updates."}),
                "erasure_file": ([NONE, *folder_paths.get_filename_list("loras")],
                                 {"default": NONE, "tooltip": "An erasure saved by Save Erasure (in models/loras)."}),
            },
            "optional": {"erasure": ("ERASURE", {"tooltip": "An erasure from Divergence Unlearn (wins over the file)."})},
        }

    def apply(self, model, strength: float, erasure_file: str, erasure=None):
        if not math.isfinite(strength):
            raise ValueError(f"strength is {strength}: set the strength widget to a number from -2 to 2")
        if erasure is None:
            if erasure_file == NONE:
                raise ValueError("no erasure given: connect an ERASURE or pick an erasure_file")
            path = folder_paths.get_full_path("loras", erasure_file)
            if path is None:
                raise ValueError(f"erasure file {erasure_file!r} is not in the loras folder any more: pick another")
            erasure = Erasure.load(path)
        return (apply_erasure(model, erasure, strength),)


class SaveErasure:
    DESCRIPTION = ("Save an erasure into models/loras as .safetensors. The file also loads with ComfyUI's stock "
                   "LoraLoaderModelOnly (same result as Apply Erased UNet) and never overwrites an existing file.")
    CATEGORY = "unlearning"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "erasure": ("ERASURE", {"tooltip": "From Divergence Unlearn."}),
                "filename_prefix": ("STRING", {"default": "erasures/erasure",
                                               "tooltip": "Sub-folder and name inside models/loras; a counter is added."}),
            }
        }

    def save(self, erasure, filename_prefix: str):
        path = erasure.save_numbered(*erasure_save_target(filename_prefix))
        root = folder_paths.get_folder_paths("loras")[0]
        relative = os.path.relpath(path, root)
        print(f"[Divergence Unlearn] saved erasure to {path}")
        return {"ui": {"text": [relative]}, "result": ()}


class ErasureReport:
    DESCRIPTION = ("Measure an erasure in prediction space on probes it never trained on (the original model's "
                   "own samples of each anchor, noised at mid timesteps): how far each target prompt moved onto its "
                   "anchor (100% = predicts like the anchor; anchor_guidance aims past it) and how far the keep "
                   "prompts drifted. How its numbers compare with a classifier: "
                   "benchmarks/results/erasure_report_agreement.md.")
    CATEGORY = "unlearning"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "chart")
    OUTPUT_TOOLTIPS = ("The numbers as text.", "The same as a bar chart.")
    OUTPUT_NODE = True  # runs (and shows its text) even when nothing consumes its outputs
    FUNCTION = "report"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **ORIGINAL_MODEL,
                "erasure": ("ERASURE", {"tooltip": "The erasure to measure."}),
                "concepts": ("CONCEPT_SET", {"tooltip": "The prompts to measure (usually the erased set)."}),
                "resolution": ("INT", {"default": 512, "min": 32, "max": 2048, "step": 8,
                                       "tooltip": "Image size in pixels of the probe latents."}),
                "probes": ("INT", {"default": 4, "min": 1, "max": 64,
                                   "tooltip": "Probes per prompt pair (samples of its anchor, noised)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": "Seed of the probe latents."}),
            }
        }

    def report(self, model, clip, erasure, concepts, resolution: int, probes: int, seed: int):
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
        return {"ui": {"text": [text]}, "result": (text, to_image_tensor(bar_chart(bars, "Erasure report")))}
