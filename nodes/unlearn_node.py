"""Divergence Unlearn (α): train the erasure on the host's own model and return the erased MODEL."""

from __future__ import annotations

import traceback

import torch

from ..unlearn_core.parameters import PARAMETER_SETS
from ..unlearn_core.targets import TARGET_MODES
from ..unlearn_core.trainer import LEGACY_PRECISIONS, PRECISIONS, EraseConfig, Eraser, divergence_names
from .comfy_adapter import ComfyDenoiser, apply_erasure, training_compatible
from .images import to_image_tensor
from .progress import TrainingProgress, loss_chart

X_SOURCES = ["anchor_samples", "trajectory", "latents"]


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
                "divergence": (divergence_names(), {"default": "hellinger", "tooltip":
                               "hellinger: bounded, the gentlest closed form; mse: the classic KL/MSE; "
                               "pearson_chi2: weights the samples that differ most; alpha: the Amari family with "
                               "the alpha below; variational_*: f-GAN bound with a critic, erases fastest and "
                               "changes the rest most. See the README's measurements."}),
                "alpha": ("FLOAT", {"default": 0.5, "min": -5.0, "max": 5.0, "step": 0.05,
                                    "tooltip": "Alpha of the 'alpha' divergence (0.5 = Hellinger, 2 = chi²; 0 and 1 = KL)."}),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.001, "max": 100.0, "step": 0.001,
                                    "tooltip": "Scale of the closed forms, r = S/sigma². Their shapes differ only "
                                               "where S/sigma² is about 1 or more; below that each is MSE times a "
                                               "constant, which sets its balance against preservation_weight. "
                                               "Watch S in the console."}),
                "target_mode": (list(TARGET_MODES), {"default": "anchor", "tooltip":
                                "anchor: become the anchor (Concept Ablation / f-DMU); negative_guidance: move away "
                                "from the target (ESD); anchor_guidance: become the anchor minus what makes the target "
                                "differ from it (when the anchor can still show the target, e.g. circle -> shape)."}),
                "guidance_eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1,
                                           "tooltip": "Strength of negative_guidance / anchor_guidance (ESD's eta)."}),
                "erase_from": ("STRING", {"default": "", "tooltip":
                               "negative_guidance only: erase the target from this prompt (e.g. 'cowboy' to "
                               "remove 'cowboy hat' from cowboys); empty = from the target itself."}),
                "parameter_set": (list(PARAMETER_SETS), {"default": "cross_attn_kv", "tooltip":
                                  "cross_attn_kv: K/V of cross-attention (styles, objects); cross_attn: ESD-x; "
                                  "non_cross_attn: ESD-u (global concepts such as nudity); attn; full."}),
                "lora_rank": ("INT", {"default": 0, "min": 0, "max": 256,
                                      "tooltip": "0 trains full weight updates; >0 trains a LoRA of this rank."}),
                "steps": ("INT", {"default": 200, "min": 1, "max": 100000, "tooltip": "Optimiser steps."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-8, "max": 1.0, "step": 1e-6,
                                            "round": False, "tooltip": "AdamW learning rate."}),
                "batch_size": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": "Prompt pairs per step."}),
                "resolution": ("INT", {"default": 512, "min": 32, "max": 2048, "step": 8,
                                       "tooltip": "Image size in pixels of the training latents."}),
                "x_source": (X_SOURCES, {"default": "anchor_samples", "tooltip":
                             "anchor_samples: images the model draws from the anchor prompts; trajectory: the "
                             "model's sampling path for the target (ESD); latents: the LATENT input."}),
                "anchor_samples": ("INT", {"default": 8, "min": 1, "max": 1000,
                                           "tooltip": "How many samples to generate once for the pool."}),
                "sample_steps": ("INT", {"default": 20, "min": 1, "max": 200,
                                         "tooltip": "Sampler steps for those samples."}),
                "preservation_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                                  "tooltip": "Weight of the keep prompts' loss."}),
                "precision": (list(PRECISIONS), {"default": "auto", "tooltip":
                              "auto: the fastest of the others for this model (model_dtype for fp16/bf16 "
                              "models); model_dtype: compute in the model's own dtype, no casts; autocast_bf16 / "
                              "autocast_fp16: cast weights and activations every forward (fp16 adds loss "
                              "scaling). The trained updates are always fp32; CPU runs use the model's dtype."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip":
                                           "Recompute activations in backward: less GPU memory, slower steps."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": "Same seed, same erasure."}),
            },
            "optional": {
                "latents": ("LATENT", {"tooltip": "Your own images of the concept (x_source = latents)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, precision):
        """Accept the precision names of saved workflows (fp32, bf16, fp16) besides the listed ones."""
        if precision in PRECISIONS or precision in LEGACY_PRECISIONS:
            return True
        return f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"

    def unlearn(self, model, clip, concepts, divergence, alpha, sigma, target_mode, guidance_eta, erase_from,
                parameter_set, lora_rank, steps, learning_rate, batch_size, resolution, x_source, anchor_samples, sample_steps,
                preservation_weight, precision, gradient_checkpointing, seed, latents=None):
        config = EraseConfig(
            divergence=divergence, alpha=alpha, sigma=sigma, target_mode=target_mode, guidance_eta=guidance_eta,
            erase_from=erase_from,
            parameter_set=parameter_set, lora_rank=lora_rank, steps=steps, learning_rate=learning_rate,
            batch_size=batch_size, resolution=resolution, x_source=x_source, num_samples=anchor_samples,
            sample_steps=sample_steps, preservation_weight=preservation_weight, precision=precision,
            gradient_checkpointing=gradient_checkpointing, seed=seed,
        )
        user_latents = None
        if latents is not None:
            with torch.inference_mode(False):
                user_latents = model.model.process_latent_in(latents["samples"].clone().float())
        progress = TrainingProgress(f"{divergence} erasure")
        try:
            erasure = _erase(model, clip, concepts, config, user_latents, progress)
        except BaseException as error:  # Cancel too: the host keeps the error, so free the frames' tensors now
            traceback.clear_frames(error.__traceback__)
            raise
        print(f"[Divergence Unlearn] done: {steps} steps in {erasure.metadata['seconds']:.1f} s")
        chart = loss_chart(progress.history, f"{divergence} erasure, {steps} steps, {erasure.metadata['seconds']:.1f} s")
        return (apply_erasure(model, erasure, 1.0), erasure, to_image_tensor(chart))


def _erase(model, clip, concepts, config: EraseConfig, user_latents, progress: TrainingProgress):
    """Train the erasure on a view of the host's model (its weights shared, never copied)."""
    denoiser = ComfyDenoiser(model, clip)
    try:
        with torch.inference_mode(False), torch.enable_grad(), training_compatible():
            return Eraser(denoiser, concepts, config, user_latents, callback=progress).run()
    finally:
        denoiser.release()
