"""The erase settings: :class:`EraseConfig` (declared settings are the node's widgets and the CLI's options) and
the engine-only ones, checked in one place (:func:`check_config`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .architectures import PARAMETER_SET_NAMES
from .divergences import CLOSED_FORM, VARIATIONAL
from .samples import X_SOURCES
from .settings import check, setting
from .targets import TARGET_MODES

VARIATIONAL_PREFIX = "variational_"
ERASE_MODES = ("plain", "adversarial")  # erase_mode: see its help
# precision option -> autocast dtype on CUDA (None: compute in the frozen weights' own dtype); see resolve_precision
PRECISIONS = {"auto": None, "model_dtype": None, "autocast_bf16": torch.bfloat16, "autocast_fp16": torch.float16}
LEGACY_PRECISIONS = {"fp32": "model_dtype", "bf16": "autocast_bf16", "fp16": "autocast_fp16"}  # saved workflows


def resolve_precision(precision: str, weight_dtype: torch.dtype, device: torch.device) -> str:
    """The option ``precision`` stands for: ``auto`` = the weights' own dtype, bf16 autocast over fp32 weights on CUDA."""
    precision = LEGACY_PRECISIONS.get(precision, precision)
    if precision != "auto":
        return precision
    fp32_on_cuda = weight_dtype == torch.float32 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return "autocast_bf16" if fp32_on_cuda else "model_dtype"


def divergence_names() -> list[str]:
    """Every divergence the trainer accepts: closed forms, ``alpha`` (with ``alpha``), and variational ones."""
    return list(CLOSED_FORM) + ["alpha"] + [VARIATIONAL_PREFIX + n for n in VARIATIONAL]


@dataclass
class EraseConfig:
    """Every erase setting. Those declared with ``setting`` are the node's widgets (in this order: saved
    workflows store them by position) and the CLI's options; the defaults are the benchmarked recipe
    (benchmarks/results/choosing_a_divergence.md). The others are engine-only."""

    divergence: str = setting("hellinger", choices=divergence_names, help=(
        "hellinger: bounded, the gentlest closed form; mse: the classic KL/MSE; pearson_chi2: weights the samples "
        "that differ most; alpha: the Amari family with the alpha below; variational_*: f-GAN bound with a critic, "
        "erases fastest and changes the rest most. Measured: benchmarks/results/choosing_a_divergence.md."))
    alpha: float = setting(0.5, "Alpha of the 'alpha' divergence (0.5 = Hellinger, 2 = chi²; 0 and 1 = KL).",
                           low=-5.0, high=5.0, step=0.05)
    sigma: float = setting(1.0, low=0.0, high=100.0, step=0.001, help=(
        "Scale of the closed forms, r = S/sigma². 0 = auto: sigma² = the median S of the first batches, so that r "
        "starts near 1 where the closed forms differ. Below r ~ 1 each is MSE times a constant, which sets its "
        "balance against preservation_weight. The console shows S, r and the sigma used."))
    timestep_weight: str = "none"  # "none" or "kl" (exact per-timestep KL weight, mean 1)
    target_mode: str = setting("anchor_guidance", choices=lambda: list(TARGET_MODES), help=(
        "anchor: become the anchor (Concept Ablation / f-DMU); negative_guidance: move away from the target (ESD); "
        "anchor_guidance: become the anchor minus what makes the target differ from it (when the anchor can still "
        "show the target, e.g. circle -> shape)."))
    guidance_eta: float = setting(-1.0, low=0.0, high=10.0, step=0.1, auto=-1.0, help=(
        "Strength of negative_guidance / anchor_guidance (ESD's eta). -1 = auto: 0.5 where keep_projection is "
        "applied (only the target's own words move, and at 1.0 they overshoot), 1.0 (ESD's) where it is not."))
    erase_from: str = setting("", "negative_guidance only: erase the target from this prompt (e.g. 'cowboy' to "
                                  "remove 'cowboy hat' from cowboys); empty = from the target itself.")
    parameter_set: str = setting("cross_attn_kv", choices=lambda: list(PARAMETER_SET_NAMES), help=(
        "cross_attn_kv: K/V of cross-attention (styles, objects; on Flux/SD3 the text stream's attention projections); "
        "cross_attn: ESD-x; non_cross_attn: ESD-u (global concepts such as nudity); attn; context_embedder: the "
        "text-embedding input layer (Flux, SD3 only); full."))
    lora_rank: int = setting(-1, "-1 = auto: full weight updates on SD1.x/SD2.x/SDXL UNets, a rank-16 LoRA on Flux "
                                 "and SD3 (a full update of Flux's text-stream qkv is 540M numbers); 0 trains full "
                                 "weight updates; >0 trains a LoRA of this rank.", low=0, high=256, auto=-1)
    steps: int = setting(400, "The most optimiser steps: erase_until normally ends the run before (the demo models: "
                               "30-300 steps); a run that reaches it first ends with a warning.", low=1, high=100000)
    learning_rate: float = setting(5e-4, "AdamW learning rate.", low=1e-8, high=1.0, step=1e-6, aliases=("--lr",))
    batch_size: int = setting(4, "Prompt pairs per step.", low=1, high=64)
    grad_accumulation: int = 1
    max_grad_norm: float = 1.0  # 0 disables clipping
    weight_decay: float = 1e-2
    resolution: int = setting(512, "Image size in pixels of the training latents.", low=32, high=2048, step=8)
    x_source: str = setting("anchor_samples", choices=X_SOURCES, help=(
        "anchor_samples: images the model draws from the anchor prompts; trajectory: the model's sampling path for "
        "the target (ESD); latents: the LATENT input."))
    num_samples: int = setting(8, "How many samples to generate once for the pool.", low=1, high=1000,
                               name="anchor_samples")
    sample_steps: int = setting(20, "Sampler steps for those samples.", low=1, high=200)
    sample_guidance: float = 6.0
    timestep_sampling: str = "uniform"
    preservation_weight: float = setting(1.0, "Weight of the keep prompts' loss.", low=0.0, high=100.0, step=0.1)
    precision: str = setting("auto", choices=lambda: list(PRECISIONS), help=(
        "auto: the fastest of the others for this model (model_dtype for fp16/bf16 models); model_dtype: compute "
        "in the model's own dtype, no casts; autocast_bf16 / autocast_fp16: cast weights and activations every "
        "forward (fp16 adds loss scaling). The trained updates are always fp32; CPU runs use the model's dtype."))
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward: less GPU memory, slower steps.")
    seed: int = setting(0, "Same seed, same erasure.", low=0, high=0xFFFFFFFF)
    erase_until: float = setting(-1.0, low=0.0, high=5.0, step=0.05, optional=True, auto=-1.0, help=(
        "Stop once every target's prediction has moved this far onto its anchor (the Erasure Report's 'moved': "
        "1.0 = predicts like the anchor; negative_guidance: this far towards its guided aim), measured every "
        "check_every steps on fixed probes never trained on; steps is then the most it runs, and a run that "
        "reaches steps first ends with a warning. -1 = auto: anchor_guidance 1 + eta/5 (1.1 at eta 0.5, 1.2 at eta 1: "
        "a little past the anchor, where the demos' images have lost the target), anchor 1.0, negative_guidance 0.6 "
        "of the way to its aim. 0 = always run all steps."))
    check_every: int = setting(10, "Measure the probes every this many steps (erase_until, max_keep_drift).",
                               low=1, high=100000, optional=True)
    max_keep_drift: float = setting(0.0, low=0.0, high=100.0, step=0.05, optional=True, help=(
        "Stop when a keep prompt drifts more than this (Erasure Report's drift, 0.5 = 50 %; the demos' erasures "
        "stay under 0.2) and return the state of the check before; 0 (default) = no limit."))
    keep_projection: bool = setting(True, optional=True, help=(
        "Train the weights that read the text (cross-attention K/V) only in directions the keep prompts' text "
        "embeddings do not use: the keep prompts then predict exactly as before, and the erasure acts through the "
        "words only the target has. Off = the keep loss alone (preservation_weight). No effect without keep "
        "prompts."))
    erase_mode: str = setting("plain", choices=ERASE_MODES, optional=True, help=(
        "plain: erase the target prompts; an attack that learns a new word or prompt brings the concept back. "
        "adversarial (experimental): also erase under an adversary that learns, as training goes, the soft prompt "
        "that brings the target back (AdvUnlearn-style), holding the keep prompts on their own images; it runs all "
        "steps. Use it with parameter_set non_cross_attn: cross-attention K/V alone cannot resist. Measured: it "
        "resists on the shapes demo at 14x the time and 6 points of its kept shapes, and on the pattern demos it "
        "does not resist and damages the kept patterns: benchmarks/results/robustness.md."))
    critic_lr: float = 1e-4
    critic_warmup: int = 30
    log_every: int = 1  # host-device sync (loss, S, grad norm, finiteness check) every N steps


def check_config(config: EraseConfig) -> None:
    """The declared settings against their declaration (``settings.check``), then the engine-only ones."""
    check(config)
    if config.timestep_weight not in ("none", "kl"):
        raise ValueError("timestep_weight must be 'none' or 'kl'")
    for name in ("grad_accumulation", "log_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.resolution % 8:
        raise ValueError(f"resolution = {config.resolution} must be a multiple of 8 pixels (latents are 1/8 of it)")

