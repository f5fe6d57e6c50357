"""The erasure loop: pull the trained model's prediction for each target prompt onto a frozen target.

Per step, for a batch of (x_t, t, prompt pair):

    target = frozen terms combined by the target mode     (one batched forward, no autograd)
    pred   = trained net(x_t, t, target prompt)           (one batched forward with the keep prompts)
    S_i    = squared_error(pred_i, target_i)              (channel sum, spatial mean)
    loss   = mean_i divergence.loss(w_t S_i / sigma^2)  +  preservation_weight * mean S_keep

The frozen model is the same network evaluated without the deltas: only the trained tensors are
duplicated, and the input network is unchanged afterwards (``injection.DeltaInjection``). With
``keep_projection`` the updates of the weights that read the text are projected, after every step, off
the keep prompts' text rows, so those prompts predict exactly as before (``keep_projection``). With
``erase_mode`` adversarial an adversary (``attacks.SoftPrompt``) learns, between steps, the conditioning that
brings each target back, and its rows are trained towards the same frozen target (docs/maths.md).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Callable

import torch
from torch import Tensor

from .concepts import ConceptSet
from .denoiser import Conditioning, Denoiser, cat_cond, index_cond
from .divergences import (
    CLOSED_FORM,
    VARIATIONAL,
    Critic,
    critic_loss,
    erasure_loss,
    generator_loss,
    get_closed_form,
    kl_timestep_weight,
    squared_error,
)
from .erasure import Erasure, fingerprint, new_metadata
from .injection import DeltaInjection, checkpointed
from .keep_projection import MIN_TRAINABLE, keep_basis, outside_share
from .architectures import ARCHITECTURES, PARAMETER_SET_NAMES
from .attacks import SoftPrompt, learn_step
from .parameters import WeightDeltas, select_parameters
from .report import Probes, encode_all
from .samples import X_SOURCES, LatentPool, build_pool
from .settings import check, setting
from .steps import StepInfo
from .targets import TARGET_MODES, PromptBank, TargetMode

VARIATIONAL_PREFIX = "variational_"
ERASE_MODES = ("plain", "adversarial")  # erase_mode: see its help
# erase_mode adversarial: Adam steps of the inner attack per training step (warm-started: its soft prompt persists)
ADVERSARY_STEPS = 2
ADVERSARY_LR = 5e-3
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


class Stop(str, Enum):
    """Why an erasure ended (the metadata's ``stop``); only CAP means it did not reach what it was asked."""

    ERASED = "erase_until"  # every target reached erase_until
    SETTLED = "settled"  # erase_until auto: every target past its anchor, and the least of them no longer moving
    CAP = "steps_cap"  # erase_until was set, and the steps ran out before it was reached: a warning
    STEPS = "steps"  # erase_until 0: it ran the steps asked for
    KEEP_DRIFT = "max_keep_drift"  # a keep prompt drifted past max_keep_drift; the state before was returned


# erase_until auto also ends a run whose targets are all past their anchors (moved >= 1) once the least of them gains
# under SETTLE_GAIN over SETTLE_CHECKS checks: with the keep projection some targets settle short of 1 + eta/5 (the
# pattern domain's stripes at 107-109 % from step 90 on, its images erased); training on would only reach the cap
SETTLE_CHECKS = 3
SETTLE_GAIN = 0.01
SIGMA_CALIBRATION_BATCHES = 4
PROBES_PER_PAIR = 4  # probes of erase_until / max_keep_drift, per prompt pair (was 2)
# guidance_eta -1 (auto) where keep_projection is applied: only the target's own words move, and at ESD's 1.0 they
# overshoot (the demo job's erased circles' colour 100 -> 92 %); where it is not, auto is ESD's 1.0
PROJECTED_ETA = 0.5


@dataclass
class Checkpoint:
    """The state measured at a check step (deltas on the CPU only when they may be restored)."""

    step: int
    erased: float  # what erase_until compares, at that step
    state: dict[str, Tensor] | None = None


class ErasureDiverged(RuntimeError):
    """The loss or the gradients became NaN/inf."""


def _check_config(config: EraseConfig) -> None:
    """The declared settings against their declaration (``settings.check``), then the engine-only ones."""
    check(config)
    if config.timestep_weight not in ("none", "kl"):
        raise ValueError("timestep_weight must be 'none' or 'kl'")
    for name in ("grad_accumulation", "log_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.resolution % 8:
        raise ValueError(f"resolution = {config.resolution} must be a multiple of 8 pixels (latents are 1/8 of it)")


class Eraser:
    """Runs one erasure of a concept set on a denoiser; see the module docstring for the loss."""

    def __init__(self, denoiser: Denoiser, concepts: ConceptSet, config: EraseConfig,
                 user_latents: Tensor | None = None, callback: Callable[[StepInfo], None] | None = None):
        config = replace(config, precision=LEGACY_PRECISIONS.get(config.precision, config.precision))
        _check_config(config)
        self.denoiser = denoiser
        self.concepts = concepts
        self.config = config
        self.user_latents = user_latents
        self.callback = callback or (lambda info: None)
        self.variational = config.divergence.startswith(VARIATIONAL_PREFIX)
        if self.variational:
            name = config.divergence[len(VARIATIONAL_PREFIX):]
            if name not in VARIATIONAL:
                raise ValueError(f"unknown divergence {config.divergence!r}; choose one of {', '.join(divergence_names())}")
            self.divergence = VARIATIONAL[name]
        else:
            self.divergence = get_closed_form(config.divergence, config.alpha)
        self.pairs = concepts.prompt_pairs()
        if not self.pairs:
            raise ValueError("the concept set has nothing to erase: add a line like `Van Gogh -> a painting`")
        self.device = denoiser.device
        self.dtype = denoiser.dtype
        self.precision = resolve_precision(config.precision, self.dtype, self.device)
        self._injection: DeltaInjection | None = None
        self.generator = torch.Generator().manual_seed(config.seed)

    # ------------------------------------------------------------------ forwards

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    def _grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling when the network computes in fp16 on CUDA; a pass-through otherwise."""
        fp16 = self.device.type == "cuda" and (
            self.precision == "autocast_fp16" or (self.precision == "model_dtype" and self.dtype == torch.float16))
        return torch.amp.GradScaler("cuda", enabled=fp16)

    def _net_call(self, frozen: bool, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """The network's output with the original weights (``frozen``) or with the trained deltas."""
        args = (x.to(self.device, self.dtype), t.to(self.device), cond)
        with self._autocast(), (self._injection.frozen() if frozen else contextlib.nullcontext()):
            return self.denoiser(*args).float()

    # ------------------------------------------------------------------ setup

    def _encode(self) -> tuple[PromptBank, Conditioning | None]:
        size = (self.config.resolution, self.config.resolution)
        enc = self.denoiser.encode_prompts
        targets = [t for t, _ in self.pairs]
        bank = PromptBank(
            target=enc(targets, size),
            anchor=enc([a for _, a in self.pairs], size),
            erase_from=enc([self.config.erase_from or t for t in targets], size),
            uncond=enc([""] * len(self.pairs), size),
        )
        keep = enc(list(self.concepts.keep), size) if self.concepts.keep else None
        return bank, keep

    def _keep_projection(self, names: list[str]) -> tuple[tuple[list[str], Tensor] | None, str]:
        """((trained weights that read the text, basis of the keep prompts' rows) or None, what was done in words).

        Not applied where a target keeps less than MIN_TRAINABLE of its most distinct row outside the keep
        prompts' span (its words are all kept, or the keep prompts fill the text space): the keep loss alone then."""
        readers = [n for n in names if ARCHITECTURES[self.denoiser.architecture].reads_text(n)]
        if not self.config.keep_projection:
            return None, "off"
        if self._keep is None or "context" not in self._keep:
            return None, "no keep prompts"
        if not readers:
            return None, f"not applicable: parameter set {self.config.parameter_set!r} trains no weight reading the text"
        keep_rows = self._keep["context"].float().cpu()
        basis = keep_basis(keep_rows.flatten(0, -2))
        span = f"the keep prompts' {basis.shape[1]} of {keep_rows.shape[-1]} text directions"
        shares = [float(outside_share(rows, basis).max()) for rows in self._bank.target["context"].float().cpu()]
        (least, _), share = min(zip(self.pairs, shares), key=lambda pair_share: pair_share[1])
        if share < MIN_TRAINABLE:
            return None, (f"not applied: {span} leave {least!r} only {share:.0%} of its most distinct row to train "
                          "(its words are all in the keep prompts, or they fill the text space); the keep loss "
                          "alone protects them. Fewer or shorter keep prompts leave it room")
        spread = f"{min(shares):.0%}" + (f"-{max(shares):.0%}" if f"{min(shares):.0%}" != f"{max(shares):.0%}" else "")
        note = f"{len(readers)} tensors trained off {span}; the targets keep {spread} of their most distinct row"
        return (readers, basis.to(self.device)), note

    def _sample_keep_prompts(self) -> LatentPool:
        """The frozen model's images of each keep prompt (as many as the anchor samples, at least one each)."""
        cfg = self.config
        count = next(iter(self._keep.values())).shape[0]
        uncond = index_cond(self._bank.uncond, torch.zeros(count, dtype=torch.long))
        return build_pool("anchor_samples", self.denoiser, self._keep, uncond, max(cfg.num_samples, count),
                          self._latent_shape(), cfg.sample_steps, cfg.sample_guidance, self.generator,
                          on_step=lambda i, n: self.callback(StepInfo("sampling", i, n)))

    def _latent_shape(self) -> tuple[int, int, int]:
        side = self.config.resolution // self.denoiser.latent_downscale
        return (self.denoiser.latent_channels, side, side)

    # ------------------------------------------------------------------ run

    def run(self) -> Erasure:
        cfg = self.config
        started = time.monotonic()
        names = select_parameters(self.denoiser.net, cfg.parameter_set, self.denoiser.architecture)
        params = dict(self.denoiser.net.named_parameters())
        originals = {n: params[n].detach() for n in names}
        auto_rank = ARCHITECTURES[self.denoiser.architecture].default_lora_rank
        self.lora_rank = cfg.lora_rank if cfg.lora_rank >= 0 else auto_rank
        deltas = WeightDeltas(originals, rank=self.lora_rank, generator=self.generator).to(self.device)
        self._abar = self.denoiser.alphas_cumprod.float().cpu()
        with torch.no_grad():
            self._bank, self._keep = self._encode()
            pool_prompts = self._bank.anchor if cfg.x_source == "anchor_samples" else self._bank.target
            self._pool = build_pool(cfg.x_source, self.denoiser, pool_prompts, self._bank.uncond, cfg.num_samples,
                                    self._latent_shape(), cfg.sample_steps, cfg.sample_guidance, self.generator,
                                    self.user_latents,
                                    on_step=lambda i, n: self.callback(StepInfo("sampling", i, n)))
        self._adversary = self._keep_pool = None
        if cfg.erase_mode == "adversarial":
            self._adversary = SoftPrompt(self._bank.target, [t for t, _ in self.pairs])
            self._adversary_optimizer = torch.optim.Adam(self._adversary.parameters(), lr=ADVERSARY_LR)
            if self._keep is not None:  # it trains the visual pathway: hold the keep prompts on their own images
                with torch.no_grad():
                    self._keep_pool = self._sample_keep_prompts()
        self._projection, self.projection_note = self._keep_projection(names)
        self.eta = cfg.guidance_eta if cfg.guidance_eta >= 0 else (PROJECTED_ETA if self._projection else 1.0)
        auto_until = TARGET_MODES[cfg.target_mode].auto_erase_until
        adversarial = self._adversary is not None
        self.settles = cfg.erase_until < 0 and TARGET_MODES[cfg.target_mode].stop_measure == "moved" and not adversarial
        # adversarial: the adversary always takes some of the erasure back, so no auto threshold holds; it runs the
        # steps (measured: benchmarks/results/robustness.md), and checks them
        erase_until = cfg.erase_until if cfg.erase_until >= 0 else 0.0 if adversarial else auto_until(self.eta)
        self.config = cfg = replace(cfg, lora_rank=self.lora_rank, guidance_eta=self.eta, erase_until=erase_until,
                                    precision=self.precision)
        if self._projection:
            deltas.project_inputs_(*self._projection)
        self._injection = DeltaInjection(self.denoiser.net, names, deltas.delta_of, fp8_compute=self.dtype)
        checking = cfg.erase_until > 0 or cfg.max_keep_drift > 0 or adversarial
        with torch.no_grad():
            self._probes = self._make_probes() if checking else None
        blocks = self.denoiser.checkpoint_blocks() if cfg.gradient_checkpointing else []
        copies = ARCHITECTURES[self.denoiser.architecture].blocks_add_into_inputs
        with self._injection, checkpointed(self.denoiser.net, blocks, copy_inputs=copies):
            history = self._train(deltas)
        reads_text = ARCHITECTURES[self.denoiser.architecture].reads_text
        if self._adversary is not None and all(reads_text(n) for n in names):
            self.stop_reason += (f"; WARNING: erase_mode adversarial trained only the weights that read the text "
                                 f"(parameter_set {cfg.parameter_set}), which measured no resistance to the attacks: "
                                 "use non_cross_attn")
        return self._artefact(deltas, originals, history, time.monotonic() - started)

    def _draw(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Conditioning]:
        """One batch: the trained rows' x_t and t, the frozen target, the keep prompts' frozen outputs, and the
        trained conditionings. The trained rows are the target prompts', with erase_mode adversarial the adversary's
        for the same pairs (same x_t), then the keep prompts': at the same x_t, or with a keep pool (adversarial)
        at their own images."""
        cfg, bank, keep = self.config, self._bank, self._keep
        mode = TARGET_MODES[cfg.target_mode]
        x_t, t, pair = self._pool.draw(cfg.batch_size, len(self.pairs), self._abar, cfg.timestep_sampling,
                                       self.generator)
        frozen_conds = [index_cond(c, pair) for c in mode.frozen_terms(bank)]
        trained_conds = [index_cond(bank.target, pair)]
        if self._adversary is not None:
            trained_conds.append(self._adversarial_rows(x_t, t, pair))
        erased_rows = len(trained_conds)
        keep_x, keep_t = x_t, t
        if keep is not None:
            if self._keep_pool is not None:
                keep_x, keep_t, keep_idx = self._keep_pool.draw(cfg.batch_size, 1, self._abar, cfg.timestep_sampling,
                                                                self.generator)
            else:
                keep_idx = torch.randint(0, next(iter(keep.values())).shape[0], (cfg.batch_size,),
                                         generator=self.generator)
            frozen_conds.append(index_cond(keep, keep_idx))
            trained_conds.append(index_cond(keep, keep_idx))
        n_terms = len(frozen_conds) - (keep is not None)
        frozen_x = torch.cat([x_t] * n_terms + [keep_x] * (keep is not None))
        frozen_t = torch.cat([t] * n_terms + [keep_t] * (keep is not None))
        with torch.no_grad():
            outs = self._net_call(True, frozen_x, frozen_t, cat_cond(frozen_conds)).chunk(len(frozen_conds))
        target = mode.combine(list(outs[:n_terms]), self.eta)
        rows_x = torch.cat([x_t] * erased_rows + [keep_x] * (keep is not None))
        rows_t = torch.cat([t] * erased_rows + [keep_t] * (keep is not None))
        return rows_x, rows_t, target, (outs[-1] if keep is not None else None), cat_cond(trained_conds)

    def _adversarial_rows(self, x_t: Tensor, t: Tensor, pair: Tensor) -> Conditioning:
        """The adversary's conditioning for ``pair`` after ADVERSARY_STEPS steps of its attack on the model as it
        is now: the conditioning that makes it predict the original model's target again (attacks.learn_step)."""
        with torch.no_grad():
            aim = self._net_call(True, x_t, t, index_cond(self._bank.target, pair))
        for _ in range(ADVERSARY_STEPS):
            learn_step(self._adversary, self._adversary_optimizer, self._net_call, x_t, t, pair, aim)
        return index_cond(self._adversary.detached(), pair)

    def _train(self, deltas: WeightDeltas) -> list[StepInfo]:
        """The optimisation loop (after the optional critic warm-up); returns the logged steps."""
        cfg = self.config
        optimizer = torch.optim.AdamW(deltas.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scaler = self._grad_scaler()
        t_weight = kl_timestep_weight(self._abar, self.denoiser.prediction_type) if cfg.timestep_weight == "kl" else None
        critic = critic_opt = None
        if self.variational:
            critic = Critic(channels=self.denoiser.latent_channels).to(self.device)
            critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr)
            for i in range(cfg.critic_warmup):
                x_t, t, target, _, conds = self._draw()
                x_t, t = x_t[: cfg.batch_size], t[: cfg.batch_size]  # the target prompts' rows
                with torch.no_grad():
                    pred = self._net_call(False, x_t, t, index_cond(conds, torch.arange(cfg.batch_size)))
                self._critic_step(critic, critic_opt, target, pred, t)
                self.callback(StepInfo("critic_warmup", i + 1, cfg.critic_warmup))

        self.sigma = cfg.sigma or self._calibrated_sigma()
        history: list[StepInfo] = []
        mode = TARGET_MODES[cfg.target_mode]
        best = Checkpoint(0, 0.0, self._snapshot(deltas))
        self.stop = Stop.CAP if cfg.erase_until > 0 else Stop.STEPS
        self.stop_reason = f"ran all {cfg.steps} steps"
        measured: list[float] = []  # what erase_until compares, at every check
        adversarial = self._adversary is not None
        for step in range(1, cfg.steps + 1):
            sums = torch.zeros(3, device=self.device)  # loss, S, keep S
            for _ in range(cfg.grad_accumulation):
                x_t, t, target, keep_target, conds = self._draw()
                copies = 2 if self._adversary is not None else 1  # erasure rows per sample: target (, adversary)
                out = self._net_call(False, x_t, t, conds)
                erased_rows = copies * cfg.batch_size
                pred, target, t = out[:erased_rows], target.repeat(copies, 1, 1, 1), t[:erased_rows]
                s = squared_error(pred, target)
                if self.variational:
                    self._critic_step(critic, critic_opt, target, pred.detach(), t)
                    critic.requires_grad_(False)
                    loss = generator_loss(self.divergence, critic(pred, t.to(self.device)))
                    critic.requires_grad_(True)
                else:
                    w = t_weight[t].to(self.device) if t_weight is not None else None
                    loss = erasure_loss(s, self.divergence, self.sigma, w)
                s_keep = torch.zeros((), device=self.device)
                if keep_target is not None:
                    s_keep = squared_error(out[erased_rows:], keep_target).mean()
                    loss = loss + cfg.preservation_weight * s_keep
                scaler.scale(loss / cfg.grad_accumulation).backward()
                sums += torch.stack([loss.detach(), s.detach().mean(), s_keep.detach()]) / cfg.grad_accumulation
            scaler.unscale_(optimizer)  # clip and log the true gradients
            if self._projection:  # before the step: Adam's moments then hold only the directions it may move
                deltas.project_inputs_(*self._projection, grads=True)
            if cfg.max_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(deltas.parameters(), cfg.max_grad_norm)
            else:
                grad_norm = torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in deltas.parameters() if p.grad is not None]))
            scaler.step(optimizer)  # with fp16, skips a step whose gradients overflowed and lowers the scale
            scaler.update()
            if self._projection:
                deltas.project_inputs_(*self._projection)
            optimizer.zero_grad(set_to_none=True)
            check = self._probes is not None and (step % cfg.check_every == 0 or step == cfg.steps)
            if step % cfg.log_every == 0 or step == cfg.steps or check:
                loss, mean_s, keep_s = sums.tolist()
                info = StepInfo("training", step, cfg.steps, loss=loss, mean_s=mean_s,
                                keep_s=keep_s if self._keep is not None else math.nan, grad_norm=float(grad_norm),
                                sigma=self.sigma)
                overflow_skipped = scaler.is_enabled() and not math.isfinite(info.grad_norm)
                if not (math.isfinite(info.loss) and (math.isfinite(info.grad_norm) or overflow_skipped)):
                    raise ErasureDiverged(
                        f"the erasure diverged at step {step} (loss {info.loss}, gradient norm {info.grad_norm}): "
                        "lower the learning rate, raise sigma, or use a bounded divergence such as hellinger")
                if check:
                    with torch.no_grad():
                        report = self._probes.measure(self._predict)
                        pairs = report.pairs + (self._probes.measure(self._predict, self._adversary.detached()).pairs
                                                if self._adversary is not None else [])  # erased under attack too
                    info.moved = min(p["moved"] for p in pairs)
                    info.progress = min(p["progress"] for p in pairs)
                    info.erased = info.moved if mode.stop_measure == "moved" else info.progress
                    info.drift = max((k["drift"] for k in report.keep), default=0.0)
                history.append(info)
                self.callback(info)
                if check and cfg.max_keep_drift > 0 and info.drift > cfg.max_keep_drift:
                    deltas.load_state_dict(best.state)
                    self.stop = Stop.KEEP_DRIFT
                    self.stop_reason = (f"keep drift {info.drift:.0%} passed max_keep_drift {cfg.max_keep_drift:.0%} "
                                        f"at step {step}: returned the state of step {best.step} "
                                        f"({_erased_text(best.erased, mode, adversarial)})")
                    break
                if check:
                    best = Checkpoint(step, info.erased, self._snapshot(deltas))
                    measured.append(info.erased)
                if check and cfg.erase_until > 0 and info.erased >= cfg.erase_until:
                    self.stop = Stop.ERASED
                    self.stop_reason = (f"erase_until {cfg.erase_until:.0%} reached at step {step} "
                                        f"({_erased_text(info.erased, mode, adversarial)})")
                    break
                if check and self.settles and _settled(measured):
                    self.stop = Stop.SETTLED
                    self.stop_reason = (f"settled at step {step}: every target past its anchor and no longer moving "
                                        f"({_erased_text(info.erased, mode, adversarial)}; erase_until auto "
                                        f"{cfg.erase_until:.0%} is out of its reach)")
                    break
        if self.stop == Stop.CAP:
            self.stop_reason = (f"WARNING: erase_until {cfg.erase_until:.0%} not reached in {cfg.steps} steps "
                                f"({_erased_text(best.erased, mode, adversarial)}): the targets may not be erased; "
                                "raise steps")
        elif self.stop == Stop.STEPS and self._probes is not None:  # the last step was a check
            self.stop_reason += f" ({_erased_text(best.erased, mode, adversarial)})"
        return history

    def _make_probes(self) -> Probes:
        """The fixed probes of erase_until / max_keep_drift, from their own seed (the pool never holds them)."""
        cfg = self.config
        conds = encode_all(self.denoiser, self.concepts, cfg.resolution)
        return Probes(self.denoiser, self._predict, self.pairs, list(self.concepts.keep), conds, PROBES_PER_PAIR,
                      cfg.resolution, torch.Generator().manual_seed(cfg.seed + 1), target_mode=cfg.target_mode,
                      eta=self.eta, erase_from=cfg.erase_from)

    def _predict(self, original: bool, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return self._net_call(original, x_t, t, cond).cpu()

    def _snapshot(self, deltas: WeightDeltas) -> dict[str, Tensor] | None:
        """A CPU copy of the deltas where max_keep_drift may need to return to them."""
        if self.config.max_keep_drift <= 0:
            return None
        return {k: v.detach().cpu().clone() for k, v in deltas.state_dict().items()}

    def _calibrated_sigma(self) -> float:
        """sigma = sqrt(median S) of the untrained model over the first batches (the setting's 0 = auto)."""
        s = []
        for _ in range(SIGMA_CALIBRATION_BATCHES):
            x_t, t, target, _, conds = self._draw()
            rows = torch.arange(self.config.batch_size)  # the target prompts' rows
            with torch.no_grad():
                pred = self._net_call(True, x_t[rows], t[rows], index_cond(conds, rows))
            s.append(squared_error(pred, target))
        return float(torch.cat(s).median().clamp_min(1e-12).sqrt())

    def _critic_step(self, critic: Critic, opt: torch.optim.Optimizer, p: Tensor, q: Tensor, t: Tensor) -> None:
        """One ascent step of the variational bound: p = frozen anchor outputs, q = trained target outputs."""
        tt = t.to(self.device)
        loss = critic_loss(self.divergence, critic(p.detach(), tt), critic(q.detach(), tt))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def _artefact(self, deltas: WeightDeltas, originals: dict[str, Tensor], history: list[StepInfo],
                  seconds: float) -> Erasure:
        erasure = Erasure(shapes={n: tuple(t.shape) for n, t in originals.items()})
        with torch.no_grad():
            for i, name in enumerate(deltas.names):
                key = str(i)
                if key in deltas.full:
                    erasure.full[name] = deltas.full[key].detach().float().cpu()
                else:
                    erasure.lora[name] = (deltas.up[key].detach().cpu(), deltas.down[key].detach().cpu(), deltas.alpha)
        erasure.metadata = new_metadata(
            family=self.denoiser.family,
            key_format=self.denoiser.key_format,
            prediction_type=self.denoiser.prediction_type,
            fingerprint=fingerprint(originals),
            concepts=self.concepts.to_dict(),
            config=asdict(replace(self.config, sigma=self.sigma)),  # every auto value resolved
            sigma_auto=self.config.sigma == 0,
            seconds=round(seconds, 2),
            history=[[h.step, h.loss, h.mean_s, h.keep_s, h.grad_norm, h.moved, h.drift, h.progress]
                     for h in history],
            stopped=self.stop_reason,
            stop=self.stop.value,
            keep_projection=self.projection_note,
        )
        return erasure


def _settled(measured: list[float]) -> bool:
    """Whether the targets, all past their anchors (moved >= 1), gained under SETTLE_GAIN over SETTLE_CHECKS checks."""
    return (len(measured) > SETTLE_CHECKS and measured[-1] >= 1.0
            and measured[-1] - measured[-1 - SETTLE_CHECKS] < SETTLE_GAIN)


def _erased_text(erased: float, mode: TargetMode, adversarial: bool = False) -> str:
    """What erase_until read, in words: the least any target moved onto its anchor, or towards its mode's aim
    (with erase_mode adversarial, asked with its prompt or with the adversary's)."""
    asked = " asked with its prompt or the adversary's" if adversarial else ""
    if mode.stop_measure == "moved":
        return f"every target{asked} moved at least {erased:.0%} onto its anchor"
    return f"every target{asked} at least {erased:.0%} of the way to the {mode.name} aim"


def erase(denoiser: Denoiser, concepts: ConceptSet, config: EraseConfig | None = None,
          user_latents: Tensor | None = None, callback: Callable[[StepInfo], None] | None = None) -> Erasure:
    """Erase ``concepts`` from ``denoiser`` (left unmodified) and return the :class:`Erasure`."""
    return Eraser(denoiser, concepts, config or EraseConfig(), user_latents, callback).run()
