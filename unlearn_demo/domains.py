"""The demo domains side by side: what a benchmark or test needs to erase a concept and score the images.

``DOMAINS["shapes"]`` is the demo model (coloured shapes, SD1.5 schedule, TAESD-style latents);
``DOMAINS["patterns"]`` the second domain (grey patterns, cosine schedule, pixel space). Each names its
two scored attributes, its concepts, its model, engine adapter, classifier and erasure prompts.
``DOMAINS["contextual"]`` is the pattern domain drawn by the same UNet with a contextual text encoder (a small
causal transformer, :mod:`unlearn_demo.contextual_text`) instead of word rows: every conditioning row mixes the
words before it, as CLIP's do; the pattern classifier reads it. ``DOMAINS["clip_shapes"]`` is the shapes domain
drawn by the demo UNet fine-tuned with a contextual encoder in CLIP-L's own layout (:mod:`unlearn_demo.clip_text`),
so that its checkpoint loads in ComfyUI with the mixing intact. ``DOMAINS["flow"]`` is the shapes domain drawn by
the flow demo model (a small rectified-flow transformer in Flux's layout), read by the demo's classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor, nn

from unlearn_core.denoiser import Denoiser

from .classifier import AttributeClassifier
from .flow_model import FlowDemoDenoiser, FlowDemoModel
from .model import CLIP_SHAPES_WEIGHTS, WEIGHTS, DemoDenoiser, DemoModel, load_classifier
from .pattern_model import (CONTEXTUAL_WEIGHTS, PATTERN_WEIGHTS, RESOLUTION, PatternDenoiser, PatternModel,
                            pattern_prompts)
from .patterns import PATTERNS, SCALES
from .shapes import COLORS, SHAPES


@dataclass(frozen=True)
class Domain:
    name: str
    attributes: dict[str, tuple[str, ...]]  # the two scored attributes; concepts are values of either
    resolution: int  # the engine's resolution for the model's latents
    weights: Path  # the folder of the domain's classifier
    load_model: Callable[[], nn.Module]
    make_denoiser: Callable[[nn.Module], Denoiser]
    prompts: Callable[[str], tuple[str, list[tuple[str, str]], list[str]]]  # concept -> (text, targets, keep)
    own_latents: Callable[[nn.Module, list[str], int], Tensor]  # (model, prompts, seed) -> the model's samples

    def load_classifier(self) -> AttributeClassifier:
        return load_classifier(self.weights)

    def attribute_of(self, concept: str) -> str:
        """The attribute ``concept`` is a value of."""
        for name, values in self.attributes.items():
            if concept in values:
                return name
        raise ValueError(f"{concept!r} is not a concept of the {self.name} domain; choose one of "
                         f"{[v for values in self.attributes.values() for v in values]}")

    def other_attribute(self, concept: str) -> str:
        return next(name for name in self.attributes if name != self.attribute_of(concept))

    def named(self, prompt: str) -> dict[str, str | None]:
        """The value of each attribute the prompt names (None where it names none)."""
        words = prompt.split()
        return {name: next((w for w in words if w in values), None) for name, values in self.attributes.items()}


def _shape_prompts(concept: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    from .main_job import demo_prompts  # the main job's module imports the headless host helpers

    return demo_prompts(concept, "")


DOMAINS = {
    "shapes": Domain("shapes", {"shape": SHAPES, "color": COLORS}, 64, WEIGHTS, DemoModel.load, DemoDenoiser,
                     _shape_prompts, lambda model, prompts, seed: model.encode(model.generate(prompts, seed=seed))),
    "patterns": Domain("patterns", {"pattern": PATTERNS, "scale": SCALES}, RESOLUTION, PATTERN_WEIGHTS,
                       PatternModel.load, PatternDenoiser, pattern_prompts,
                       lambda model, prompts, seed: model.sample_latents(prompts, seed=seed)),
    "contextual": Domain("contextual", {"pattern": PATTERNS, "scale": SCALES}, RESOLUTION, PATTERN_WEIGHTS,
                         lambda: PatternModel.load(CONTEXTUAL_WEIGHTS), PatternDenoiser, pattern_prompts,
                         lambda model, prompts, seed: model.sample_latents(prompts, seed=seed)),
    "clip_shapes": Domain("clip_shapes", {"shape": SHAPES, "color": COLORS}, 64, WEIGHTS,
                          lambda: DemoModel.load(CLIP_SHAPES_WEIGHTS), DemoDenoiser, _shape_prompts,
                          lambda model, prompts, seed: model.encode(model.generate(prompts, seed=seed))),
    "flow": Domain("flow", {"shape": SHAPES, "color": COLORS}, 64, WEIGHTS, FlowDemoModel.load, FlowDemoDenoiser,
                   _shape_prompts, lambda model, prompts, seed: model.sample_latents(prompts, seed=seed)),
}
