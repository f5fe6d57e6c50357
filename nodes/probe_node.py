"""Robustness Probe: attack an erasure inside the graph (unlearn_core.attacks) and show what it brings back."""

from __future__ import annotations

import torch
from PIL import Image

from ..unlearn_core.attacks import AttackConfig, ProbeResult, probe
from ..unlearn_core.plot import bar_chart, comparison_grid
from ..unlearn_core.settings import config_from_inputs
from .comfy_adapter import before_erasure, training_view
from .erasure_nodes import original_model_inputs
from .host import CONCEPT_SET, ERASURE, io, shown
from .images import to_image_tensor
from .progress import TrainingProgress
from .widgets import setting_inputs


class RobustnessProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DivergenceUnlearnRobustnessProbe", display_name="Robustness Probe", category="unlearning",
            description=(
                "Attack an erasure: learn, on the erased model, the conditioning that brings each target back "
                "(soft_prompt: an offset on the text encoder's output; textual_inversion: one new word, the demo "
                "models) from images of the target the original model draws. Reports, in the Erasure Report's "
                "terms, how far the attack restores each target's prediction (100% = as before the erasure), shows "
                "the original, erased and attacked images side by side, and outputs the attack's conditioning to "
                "sample with. Measured: benchmarks/results/robustness.md."),
            inputs=[
                *original_model_inputs(),
                ERASURE.Input("erasure", tooltip="The erasure to attack."),
                CONCEPT_SET.Input("concepts", tooltip="The erased concept set: its target prompts are attacked."),
                *setting_inputs(AttackConfig),
                io.Vae.Input("vae", optional=True,
                             tooltip="Decodes the preview images; without it the images output is a chart of the "
                                     "numbers."),
            ],
            outputs=[
                io.Image.Output(display_name="images",
                                tooltip="Original | erased | erased asked with the attack, per target prompt (same "
                                        "noise); without a VAE, a chart of how far the attack restored each target."),
                io.Conditioning.Output(display_name="adversarial_conditioning",
                                       tooltip="The attack's conditioning of the first target prompt: connect it to "
                                               "a sampler's positive."),
                io.String.Output(display_name="report", tooltip="The numbers as text."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, erasure, concepts, vae=None, **settings) -> io.NodeOutput:
        config = config_from_inputs(AttackConfig, settings)
        model, erasure = before_erasure(model, erasure)
        progress = TrainingProgress(f"{config.attack} attack")
        with training_view(model, clip) as denoiser:
            result = probe(denoiser, erasure, concepts, config, callback=progress)
        text = result.text()
        print(f"[Divergence Unlearn] {text}")
        bars = [(f"restored: {p['target']}", 1 - p["moved"]) for p in result.after.pairs]
        grid = to_image_tensor(_grid(result, model, vae) if vae is not None else bar_chart(bars, "Robustness probe"))
        return io.NodeOutput(grid, _conditioning(result, clip), text, ui=shown(cls, text=text, image=grid))


def _decoded(latents: torch.Tensor, model, vae) -> list[Image.Image]:
    pixels = vae.decode(model.model.process_latent_out(latents.float()))
    return [Image.fromarray((255 * p.clamp(0, 1)).byte().cpu().numpy()) for p in pixels.reshape(-1, *pixels.shape[-3:])]


def _grid(result: ProbeResult, model, vae) -> Image.Image:
    columns = [_decoded(result.latents[k], model, vae) for k in ("original", "erased", "attacked")]
    per = len(columns[0]) // len(result.prompts)
    labels = [result.before.pairs[i // per]["target"] for i in range(len(columns[0]))]
    rows = [(label, [column[i] for column in columns]) for i, label in enumerate(labels)]
    return comparison_grid(rows, ["original", "erased", f"erased + {result.attack}"])


def _conditioning(result: ProbeResult, clip) -> list:
    """The attack's first row as a CONDITIONING, with the target prompt's pooled output where CLIP gives one."""
    with torch.inference_mode():
        _, pooled = clip.encode_from_tokens(clip.tokenize(result.before.pairs[0]["target"]), return_pooled=True)
    extra = {"pooled_output": pooled.clone()} if pooled is not None else {}
    return [[result.conditioning["context"][:1].float().clone(), extra]]
