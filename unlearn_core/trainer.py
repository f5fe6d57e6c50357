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
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from .architectures import ARCHITECTURES
from .attacks import SoftPrompt, learn_step
from .concepts import ConceptSet
from .config import (LEGACY_PRECISIONS, PRECISIONS, VARIATIONAL_PREFIX, EraseConfig, check_config,
                     divergence_names, resolve_precision)
from .denoiser import Conditioning, Denoiser, cat_cond, index_cond
from .divergences import (
    VARIATIONAL,
    Critic,
    critic_loss,
    erasure_loss,
    generator_loss,
    get_closed_form,
    kl_timestep_weight,
    squared_error,
)
from .erasure import Erasure, fingerprint
from .injection import DeltaInjection, checkpointed
from .keep_projection import MIN_TRAINABLE, keep_basis, outside_share
from .metadata import ErasureMetadata, Projection, ProjectionRecord, Stop, step_record
from .parameters import WeightDeltas, select_parameters
from .report import Probes, encode_all
from .samples import LatentPool, build_pool
from .steps import StepInfo
from .targets import TARGET_MODES, PromptBank, TargetMode

__all__ = ["EraseConfig", "Eraser", "ErasureDiverged", "Stop", "divergence_names", "erase"]

# erase_mode adversarial: Adam steps of the inner attack per training step (warm-started: its soft prompt persists)
ADVERSARY_STEPS = 2
ADVERSARY_LR = 5e-3
# erase_until auto also ends a run whose targets are all past their anchors (moved >= 1) once the least of them gains
# under SETTLE_GAIN over SETTLE_CHECKS checks: with the keep projection some targets settle short of 1 + eta/5 (the
# pattern domain's stripes at 107-109 % from step 90 on, its images erased); training on would only reach the cap
SETTLE_CHECKS = 3
SETTLE_GAIN = 0.01
SIGMA_CALIBRATION_BATCHES = 4
PROBES_PER_PAIR = 4  # probes of erase_until / max_keep_drift, per prompt pair
# guidance_eta -1 (auto) where keep_projection is applied: only the target's own words move, and at ESD's 1.0 they
# overshoot (the demo job's erased circles lose some of their colour); where it is not, auto is ESD's 1.0
PROJECTED_ETA = 0.5


@dataclass
class Checkpoint:
    """The state measured at a check step (deltas on the CPU only when they may be restored)."""

    step: int
    erased: float  # what erase_until compares, at that step
    state: dict[str, Tensor] | None = None


class ErasureDiverged(RuntimeError):
    """The loss or the gradients became NaN/inf."""


class Eraser:
    """Runs one erasure of a concept set on a denoiser; see the module docstring for the loss.

    ``run`` prepares (pools, adversary, keep projection, every "auto" setting resolved into ``config``), then
    trains: ``_train`` is the loop, ``_step`` one optimiser step, ``_loss`` one batch's loss, ``_stop_at`` the
    stopping rules."""

    def __init__(self, denoiser: Denoiser, concepts: ConceptSet, config: EraseConfig,
                 user_latents: Tensor | None = None, callback: Callable[[StepInfo], None] | None = None):
        config = replace(config, precision=LEGACY_PRECISIONS.get(config.precision, config.precision))
        check_config(config)
        self.denoiser = denoiser
        self.concepts = concepts
        self.config = config
        self.user_latents = user_latents
        self.callback = callback or (lambda info: None)
        self.variational = config.divergence.startswith(VARIATIONAL_PREFIX)
        if self.variational:
            self.divergence = VARIATIONAL[config.divergence[len(VARIATIONAL_PREFIX):]]
        else:
            self.divergence = get_closed_form(config.divergence, config.alpha)
        self.pairs = concepts.prompt_pairs()
        if not self.pairs:
            raise ValueError("the concept set has nothing to erase: add a line like `Van Gogh -> a painting`")
        self.device = denoiser.device
        self.dtype = denoiser.dtype
        self.precision = resolve_precision(config.precision, self.dtype, self.device)
        self._injection: DeltaInjection | None = None
        self._critic: Critic | None = None
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

    def _keep_projection(self, names: list[str]) -> tuple[tuple[list[str], Tensor] | None, ProjectionRecord]:
        """(trained weights that read the text and the basis of the keep prompts' rows, or None; what was done).

        Not applied where a target keeps less than MIN_TRAINABLE of its most distinct row outside the keep
        prompts' span (its words are all kept, or the keep prompts fill the text space): the keep loss alone then."""
        readers = [n for n in names if ARCHITECTURES[self.denoiser.architecture].reads_text(n)]
        if not self.config.keep_projection:
            return None, ProjectionRecord(Projection.OFF, "off")
        if self._keep is None or "context" not in self._keep:
            return None, ProjectionRecord(Projection.NO_KEEP_PROMPTS, "no keep prompts")
        if not readers:
            return None, ProjectionRecord(Projection.NOT_APPLICABLE, (
                f"not applicable: parameter set {self.config.parameter_set!r} trains no weight reading the text"))
        keep_rows = self._keep["context"].float().cpu()
        basis = keep_basis(keep_rows.flatten(0, -2))
        span = f"the keep prompts' {basis.shape[1]} of {keep_rows.shape[-1]} text directions"
        shares = tuple(float(outside_share(rows, basis).max()) for rows in self._bank.target["context"].float().cpu())
        record = partial(ProjectionRecord, keep_directions=basis.shape[1], text_directions=keep_rows.shape[-1],
                         target_shares=shares)
        (least, _), share = min(zip(self.pairs, shares), key=lambda pair_share: pair_share[1])
        if share < MIN_TRAINABLE:
            return None, record(Projection.FELL_BACK, (
                f"not applied: {span} leave {least!r} only {share:.0%} of its most distinct row to train (its words "
                "are all in the keep prompts, or they fill the text space); the keep loss alone protects them. Fewer "
                "or shorter keep prompts leave it room"))
        spread = f"{min(shares):.0%}" + (f"-{max(shares):.0%}" if f"{min(shares):.0%}" != f"{max(shares):.0%}" else "")
        note = f"{len(readers)} tensors trained off {span}; the targets keep {spread} of their most distinct row"
        return (readers, basis.to(self.device)), record(Projection.APPLIED, note, tensors=len(readers))

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
        started = time.monotonic()
        names = select_parameters(self.denoiser.net, self.config.parameter_set, self.denoiser.architecture)
        params = dict(self.denoiser.net.named_parameters())
        originals = {n: params[n].detach() for n in names}
        deltas = self._prepare(names, originals)
        cfg = self.config
        blocks = self.denoiser.checkpoint_blocks() if cfg.gradient_checkpointing else []
        copies = ARCHITECTURES[self.denoiser.architecture].blocks_add_into_inputs
        with self._injection, checkpointed(self.denoiser.net, blocks, copy_inputs=copies):
            if self.variational:
                self._warm_critic()
            self.sigma_auto = cfg.sigma == 0
            self.config = cfg = replace(cfg, sigma=cfg.sigma or self._calibrated_sigma())  # the last auto resolved
            history = self._train(deltas)
        reads_text = ARCHITECTURES[self.denoiser.architecture].reads_text
        if self._adversary is not None and all(reads_text(n) for n in names):
            self.stop_reason += (f"; WARNING: erase_mode adversarial trained only the weights that read the text "
                                 f"(parameter_set {cfg.parameter_set}), which measured no resistance to the attacks: "
                                 "use non_cross_attn")
        return self._artefact(deltas, originals, history, time.monotonic() - started)

    def _prepare(self, names: list[str], originals: dict[str, Tensor]) -> WeightDeltas:
        """The zero deltas of ``names``, the image pools, the adversary, the keep projection and the probes; every
        "auto" setting but sigma (calibrated on the first batches) resolved into ``self.config``."""
        cfg = self.config
        lora_rank = cfg.lora_rank if cfg.lora_rank >= 0 else ARCHITECTURES[self.denoiser.architecture].default_lora_rank
        deltas = WeightDeltas(originals, rank=lora_rank, generator=self.generator).to(self.device)
        self._abar = self.denoiser.alphas_cumprod.float().cpu()
        self._t_weight = kl_timestep_weight(self._abar, self.denoiser.prediction_type) \
            if cfg.timestep_weight == "kl" else None
        with torch.no_grad():
            self._bank, self._keep = self._encode()
            pool_prompts = self._bank.anchor if cfg.x_source == "anchor_samples" else self._bank.target
            self._pool = build_pool(cfg.x_source, self.denoiser, pool_prompts, self._bank.uncond, cfg.num_samples,
                                    self._latent_shape(), cfg.sample_steps, cfg.sample_guidance, self.generator,
                                    self.user_latents,
                                    on_step=lambda i, n: self.callback(StepInfo("sampling", i, n)))
        self._adversary = self._keep_pool = None
        adversarial = cfg.erase_mode == "adversarial"
        if adversarial:
            self._adversary = SoftPrompt(self._bank.target, [t for t, _ in self.pairs])
            self._adversary_optimizer = torch.optim.Adam(self._adversary.parameters(), lr=ADVERSARY_LR)
            if self._keep is not None:  # it trains the visual pathway: hold the keep prompts on their own images
                with torch.no_grad():
                    self._keep_pool = self._sample_keep_prompts()
        self._projection, self.projection = self._keep_projection(names)
        eta = cfg.guidance_eta if cfg.guidance_eta >= 0 else (PROJECTED_ETA if self._projection else 1.0)
        mode = TARGET_MODES[cfg.target_mode]
        self.settles = cfg.erase_until < 0 and mode.stop_measure == "moved" and not adversarial
        # adversarial: the adversary always takes some of the erasure back, so no auto threshold holds; it runs the
        # steps (measured: benchmarks/results/robustness.md), and checks them
        erase_until = cfg.erase_until if cfg.erase_until >= 0 else 0.0 if adversarial else mode.auto_erase_until(eta)
        self.config = cfg = replace(cfg, lora_rank=lora_rank, guidance_eta=eta, erase_until=erase_until,
                                    precision=self.precision)
        if self._projection:
            deltas.project_inputs_(*self._projection)
        self._injection = DeltaInjection(self.denoiser.net, names, deltas.delta_of, fp8_compute=self.dtype)
        with torch.no_grad():
            checking = cfg.erase_until > 0 or cfg.max_keep_drift > 0 or adversarial
            self._probes = self._make_probes() if checking else None
        return deltas

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
        target = mode.combine(list(outs[:n_terms]), cfg.guidance_eta)
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
        """The optimisation loop; returns the logged steps, and sets ``stop`` and ``stop_reason``."""
        cfg = self.config
        optimizer = torch.optim.AdamW(deltas.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scaler = self._grad_scaler()
        history: list[StepInfo] = []
        measured: list[float] = []  # what erase_until compares, at every check
        best = Checkpoint(0, 0.0, self._snapshot(deltas))  # what is returned: the last check (drift: the one before)
        self.stop = Stop.CAP if cfg.erase_until > 0 else Stop.STEPS
        for step in range(1, cfg.steps + 1):
            sums, grad_norm = self._step(deltas, optimizer, scaler)
            check = self._probes is not None and (step % cfg.check_every == 0 or step == cfg.steps)
            if not (step % cfg.log_every == 0 or step == cfg.steps or check):
                continue
            info = self._logged(step, sums, grad_norm, scaler, check)
            history.append(info)
            self.callback(info)
            if check:
                stop = self._stop_at(info, measured)
                if stop is Stop.KEEP_DRIFT:
                    deltas.load_state_dict(best.state)  # the state of the check before
                else:
                    best = Checkpoint(step, info.erased, self._snapshot(deltas))
                if stop is not None:
                    self.stop = stop
                    break
        self.stop_reason = _stop_text(self.stop, cfg, info, best, self._probes is not None, self._adversary is not None)
        return history

    def _step(self, deltas: WeightDeltas, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler) -> tuple[Tensor, Tensor]:
        """One optimiser step over grad_accumulation batches: the means of (loss, S, keep S), and the gradient norm."""
        cfg = self.config
        sums = torch.zeros(3, device=self.device)
        for _ in range(cfg.grad_accumulation):
            loss, s, s_keep = self._loss()
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
        return sums, grad_norm

    def _loss(self) -> tuple[Tensor, Tensor, Tensor]:
        """One batch's loss (erasure terms plus preservation), the erasure terms' S, and the keep prompts' mean S."""
        cfg = self.config
        x_t, t, target, keep_target, conds = self._draw()
        copies = 2 if self._adversary is not None else 1  # erasure rows per sample: target (, adversary)
        out = self._net_call(False, x_t, t, conds)
        erased_rows = copies * cfg.batch_size
        pred, target, t = out[:erased_rows], target.repeat(copies, 1, 1, 1), t[:erased_rows]
        s = squared_error(pred, target)
        if self.variational:
            self._critic_step(target, pred.detach(), t)
            self._critic.requires_grad_(False)
            loss = generator_loss(self.divergence, self._critic(pred, t.to(self.device)))
            self._critic.requires_grad_(True)
        else:
            w = self._t_weight[t].to(self.device) if self._t_weight is not None else None
            loss = erasure_loss(s, self.divergence, cfg.sigma, w)
        s_keep = torch.zeros((), device=self.device)
        if keep_target is not None:
            s_keep = squared_error(out[erased_rows:], keep_target).mean()
            loss = loss + cfg.preservation_weight * s_keep
        return loss, s, s_keep

    def _logged(self, step: int, sums: Tensor, grad_norm: Tensor, scaler: torch.amp.GradScaler,
                check: bool) -> StepInfo:
        """The step's record, measured on the probes on a check step; :class:`ErasureDiverged` if it is not finite."""
        loss, mean_s, keep_s = sums.tolist()
        info = StepInfo("training", step, self.config.steps, loss=loss, mean_s=mean_s,
                        keep_s=keep_s if self._keep is not None else math.nan, grad_norm=float(grad_norm),
                        sigma=self.config.sigma)
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
            info.erased = info.moved if TARGET_MODES[self.config.target_mode].stop_measure == "moved" else info.progress
            info.drift = max((k["drift"] for k in report.keep), default=0.0)
        return info

    def _stop_at(self, check: StepInfo, measured: list[float]) -> Stop | None:
        """Whether a check ends the run, and why (None: it goes on); records what erase_until compares."""
        cfg = self.config
        if cfg.max_keep_drift > 0 and check.drift > cfg.max_keep_drift:
            return Stop.KEEP_DRIFT
        measured.append(check.erased)
        if cfg.erase_until > 0 and check.erased >= cfg.erase_until:
            return Stop.ERASED
        if self.settles and _settled(measured):
            return Stop.SETTLED
        return None

    def _warm_critic(self) -> None:
        """The variational divergences' critic, trained critic_warmup steps before the deltas move."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):  # its initial weights from the seed, not the process's RNG state
            torch.default_generator.manual_seed(cfg.seed)  # the CPU one only: the critic is made there
            self._critic = Critic(channels=self.denoiser.latent_channels).to(self.device)
        self._critic_opt = torch.optim.AdamW(self._critic.parameters(), lr=cfg.critic_lr)
        for i in range(cfg.critic_warmup):
            x_t, t, target, _, conds = self._draw()
            x_t, t = x_t[: cfg.batch_size], t[: cfg.batch_size]  # the target prompts' rows
            with torch.no_grad():
                pred = self._net_call(False, x_t, t, index_cond(conds, torch.arange(cfg.batch_size)))
            self._critic_step(target, pred, t)
            self.callback(StepInfo("critic_warmup", i + 1, cfg.critic_warmup))

    def _critic_step(self, p: Tensor, q: Tensor, t: Tensor) -> None:
        """One ascent step of the variational bound: p = frozen anchor outputs, q = trained target outputs."""
        tt = t.to(self.device)
        loss = critic_loss(self.divergence, self._critic(p.detach(), tt), self._critic(q.detach(), tt))
        self._critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._critic_opt.step()

    def _make_probes(self) -> Probes:
        """The fixed probes of erase_until / max_keep_drift, from their own seed (the pool never holds them)."""
        cfg = self.config
        conds = encode_all(self.denoiser, self.concepts, cfg.resolution)
        return Probes(self.denoiser, self._predict, self.pairs, list(self.concepts.keep), conds, PROBES_PER_PAIR,
                      cfg.resolution, torch.Generator().manual_seed(cfg.seed + 1), target_mode=cfg.target_mode,
                      eta=cfg.guidance_eta, erase_from=cfg.erase_from)

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
        erasure.metadata = ErasureMetadata(
            family=self.denoiser.family,
            key_format=self.denoiser.key_format,
            prediction_type=self.denoiser.prediction_type,
            fingerprint=fingerprint(originals),
            concepts=self.concepts.to_dict(),
            config=replace(self.config),  # every auto value resolved
            sigma_auto=self.sigma_auto,
            seconds=round(seconds, 2),
            history=[step_record(h) for h in history],
            stop=self.stop,
            stopped=self.stop_reason,
            keep_projection=self.projection,
        )
        return erasure


def _settled(measured: list[float]) -> bool:
    """Whether the targets, all past their anchors (moved >= 1), gained under SETTLE_GAIN over SETTLE_CHECKS checks."""
    return (len(measured) > SETTLE_CHECKS and measured[-1] >= 1.0
            and measured[-1] - measured[-1 - SETTLE_CHECKS] < SETTLE_GAIN)


def _stop_text(stop: Stop, cfg: EraseConfig, last: StepInfo, best: Checkpoint, checked: bool,
               adversarial: bool) -> str:
    """Why the run ended, in words: the console's, the node's and the metadata's last line (a warning for CAP).
    ``last``: the last logged step; ``best``: the state returned (the last check's; on KEEP_DRIFT the one before)."""
    mode = TARGET_MODES[cfg.target_mode]
    if stop is Stop.KEEP_DRIFT:
        return (f"keep drift {last.drift:.0%} passed max_keep_drift {cfg.max_keep_drift:.0%} at step {last.step}: "
                f"returned the state of step {best.step} ({_erased_text(best.erased, mode, adversarial)})")
    if stop is Stop.ERASED:
        return (f"erase_until {cfg.erase_until:.0%} reached at step {last.step} "
                f"({_erased_text(best.erased, mode, adversarial)})")
    if stop is Stop.SETTLED:
        return (f"settled at step {last.step}: every target past its anchor and no longer moving "
                f"({_erased_text(best.erased, mode, adversarial)}; erase_until auto {cfg.erase_until:.0%} is out "
                "of its reach)")
    if stop is Stop.CAP:
        return (f"WARNING: erase_until {cfg.erase_until:.0%} not reached in {cfg.steps} steps "
                f"({_erased_text(best.erased, mode, adversarial)}): the targets may not be erased; raise steps")
    return f"ran all {cfg.steps} steps" + (f" ({_erased_text(best.erased, mode, adversarial)})" if checked else "")


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
