"""Engine vs naive erasure loop: step time and peak memory, side by side, on the same model (issue 6).

    python benchmarks/bench_engine.py --device cpu --model demo --model sd15 --out benchmarks/results/cpu.md
    python benchmarks/bench_engine.py --device cuda --model demo --model sd15 --model sdxl --out benchmarks/results/gpu.md

Two sides train the same cross-attention K/V tensors of the same randomly initialised UNet on the same
latents, timesteps, noise and prompt draws, with the same loss:

- engine: the real ``unlearn_core.trainer.erase`` (``x_source="latents"``, so no sampling; divergence
  ``mse``, target mode ``anchor``, one keep prompt; ``log_every`` = the number of steps, so the only
  host sync is at the last step). On CUDA it runs with ``precision="bf16"`` (autocast, fp32 weights
  unless ``--engine-weights`` says otherwise).
- naive: written here the way the ESD / Concept Ablation scripts are: a second full copy of the UNet
  (frozen, ``deepcopy``), fp32, one forward per term (frozen anchor, frozen keep, trained target,
  trained keep), ``loss.item()`` every step, ``torch.optim.Adam`` over the K/V tensors, which are the
  only tensors with ``requires_grad`` (the ESD script leaves every tensor trainable; that would make
  the naive side slower, and is not done here).

The engine is configured so the maths is the same as the naive loop: ``weight_decay=0`` (AdamW = Adam)
and ``max_grad_norm=0`` (no clipping); training additive deltas from zero with Adam is the same
trajectory as training the tensors in place. On CPU (fp32 on both sides) the final losses agree to
float rounding, which the table shows.

Each side runs in its own fresh subprocess (``--side``). Step time: mean wall time of the steps after
``--warmup`` warm-up steps (``time.perf_counter``; on CUDA synchronised at the start and the end of the
timed window only, and the engine's window is read from a global optimizer step hook). Peak memory:
CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; CPU: the process's peak
RSS (``VmHWM``), reset through ``/proc/self/clear_refs`` after the model, prompt encodings and latents
are built (falls back to ``ru_maxrss`` when that is not allowed). "over model" is the peak minus the
memory held right after that construction: the memory the training method itself needs.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS = ("demo", "toy", "sd15", "sdxl")
ALL_MODELS = {"cpu": ("demo", "sd15"), "cuda": ("demo", "sd15", "sdxl")}

# (device, model) -> batch, latent side, timed steps, warm-up steps, repeats (alternating engine/naive runs)
DEFAULTS = {
    ("cpu", "demo"): dict(batch=2, latent=8, steps=6, warmup=2, repeats=3),
    ("cpu", "toy"): dict(batch=2, latent=8, steps=10, warmup=2, repeats=3),
    ("cpu", "sd15"): dict(batch=1, latent=8, steps=3, warmup=1, repeats=1),
    ("cpu", "sdxl"): dict(batch=1, latent=8, steps=2, warmup=1, repeats=1),
    ("cuda", "demo"): dict(batch=4, latent=8, steps=50, warmup=5, repeats=1),
    ("cuda", "toy"): dict(batch=4, latent=8, steps=50, warmup=5, repeats=1),
    ("cuda", "sd15"): dict(batch=4, latent=64, steps=30, warmup=3, repeats=1),
    ("cuda", "sdxl"): dict(batch=1, latent=128, steps=20, warmup=3, repeats=1),
}

TARGET_PROMPT = "a painting in the style of Van Gogh"
ANCHOR_PROMPT = "a painting"
KEEP_PROMPTS = ("a photo of a dog", "a photo of a cat", "a city street at night", "a bowl of fruit")
NUM_LATENTS = 8  # clean latents in the pool
GB = 1e9
CPU_TARGETS = dict(speedup=2.0, memory=0.6)
GPU_TARGETS = dict(model="sd15", latent=64, batch=4, seconds_200=60.0, peak_bytes=6 * GB)


# ---------------------------------------------------------------------------------------- models


def sd15_config() -> dict:
    return dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, use_linear_projection=False,
    )


def sdxl_config() -> dict:
    """stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2.57 B parameters)."""
    return dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32,
    )


def random_init_(net, seed: int, device) -> None:
    """Seeded random weights: Linear/Conv ~ N(0, 1/fan_in), zero biases, unit norms."""
    import torch
    from torch import nn

    g = torch.Generator(device=device).manual_seed(seed)
    done = set()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.normal_(0.0, 1.0 / math.sqrt(m.weight[0].numel()), generator=g)
                done.add(id(m.weight))
                if m.bias is not None:
                    m.bias.zero_()
                    done.add(id(m.bias))
            elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                for p, value in ((m.weight, 1.0), (m.bias, 0.0)):
                    if p is not None:
                        p.fill_(value)
                        done.add(id(p))
        for p in net.parameters():
            if id(p) not in done:
                p.normal_(0.0, 0.02, generator=g)
    if any(True for _ in net.buffers()):
        raise RuntimeError("this UNet has buffers; random_init_ only initialises parameters")


def build_unet(model: str, device, seed: int):
    """The UNet (fp32, on ``device``, random weights, nothing downloaded) and its context length."""
    import torch
    from diffusers import UNet2DConditionModel

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}")
    if model == "demo":  # the shipped demo model's UNet (trained weights, SD1.5 layout, 320 channels)
        from unlearn_demo.diffusers_pipeline import demo_unet

        return demo_unet().to(device), 77
    if model == "toy":
        from unlearn_demo.toy import tiny_pipeline

        with tempfile.TemporaryDirectory() as tmp:
            pipe = tiny_pipeline(Path(tmp), seed=seed)
        return pipe.unet.to(device), pipe.tokenizer.model_max_length
    config = sd15_config() if model == "sd15" else sdxl_config()
    with torch.device("meta"):  # no default init: the weights are written once, below
        unet = UNet2DConditionModel(**config)
    unet = unet.to_empty(device=device)
    random_init_(unet, seed, device)
    return unet, 77


def encode(prompts, unet, seq_len: int, pixels: int, seed: int, device, dtype):
    """Fixed random conditioning per prompt (no text encoder): same prompt, same tensors, on both sides."""
    import torch

    cfg = unet.config
    sdxl = getattr(cfg, "addition_embed_type", None) == "text_time"
    ctx, pooled = [], []
    for p in prompts:
        g = torch.Generator().manual_seed((zlib.crc32(p.encode()) + seed) % 2**63)
        ctx.append(torch.randn(seq_len, cfg.cross_attention_dim, generator=g))
        if sdxl:
            pooled.append(torch.randn(cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim,
                                      generator=g))
    out = {"context": torch.stack(ctx).to(device, dtype)}
    if sdxl:
        out["text_embeds"] = torch.stack(pooled).to(device, dtype)
        out["time_ids"] = torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]] * len(prompts)).to(device, dtype)
    return out


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, prediction_type="epsilon")


def unet_call(unet, x, t, cond):
    """The forward both sides use (the same call as ``DiffusersDenoiser.forward``)."""
    added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]} if "text_embeds" in cond else None
    return unet(x, t, encoder_hidden_states=cond["context"], added_cond_kwargs=added).sample


def is_kv(name: str) -> bool:
    return ".attn2.to_k." in name or ".attn2.to_v." in name


# ---------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


class Memory:
    """Peak memory from a baseline: CUDA allocator statistics, or the process's peak RSS on CPU."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.method = ""

    def baseline(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed construction memory back first
        except OSError:
            pass
        self.base = _status_kib("VmRSS") * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
            self.method = "peak RSS (VmHWM) after /proc/self/clear_refs reset"
        except OSError:
            self.method = "ru_maxrss over the whole process (clear_refs not allowed: includes construction)"

    def peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated()
        if self.method.startswith("peak RSS"):
            return _status_kib("VmHWM") * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------- one side


def run_side(args) -> dict:
    import torch

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    unet, seq_len = build_unet(args.model, device, args.seed)
    weights_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        args.engine_weights if args.side == "engine" else "fp32"]
    if weights_dtype != torch.float32:
        unet = unet.to(weights_dtype)
    pixels = args.latent * 8
    keep = list(KEEP_PROMPTS[: args.keep])
    latents = torch.randn(NUM_LATENTS, 4, args.latent, args.latent, generator=torch.Generator().manual_seed(args.seed))
    sched = scheduler()
    total = args.warmup + args.steps
    mem = Memory(device)
    info = dict(side=args.side, model=args.model, device=str(device), batch=args.batch, latent=args.latent,
                keep_prompts=len(keep), warmup=args.warmup, steps=args.steps, lr=args.lr, seed=args.seed,
                torch=torch.__version__, threads=torch.get_num_threads(),
                params_total=sum(p.numel() for p in unet.parameters()),
                params_trained=sum(p.numel() for n, p in unet.named_parameters() if is_kv(n)))
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["precision"] = "bf16 autocast" if args.side == "engine" else "fp32"
    else:
        info["precision"] = "fp32"
    info["weights"] = str(weights_dtype).replace("torch.", "")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    marks: list[float] = []  # perf_counter after each optimizer step

    if args.side == "engine":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        from unlearn_core.adapters.diffusers_sd import DiffusersDenoiser
        from unlearn_core.concepts import ConceptPair, ConceptSet
        from unlearn_core.trainer import EraseConfig, erase

        class BenchDenoiser(DiffusersDenoiser):
            """The diffusers adapter with fixed random prompt encodings instead of text encoders."""

            def encode_prompts(self, prompts, size):
                return encode(prompts, self.net, seq_len, size[0], args.seed, self.device, self.dtype)

        denoiser = BenchDenoiser(unet, None, None, sched)
        concepts = ConceptSet(pairs=(ConceptPair(TARGET_PROMPT, ANCHOR_PROMPT),), keep=tuple(keep))
        config = EraseConfig(
            divergence="mse", target_mode="anchor", parameter_set="cross_attn_kv", lora_rank=0,
            steps=total, learning_rate=args.lr, batch_size=args.batch, grad_accumulation=1,
            max_grad_norm=0.0, weight_decay=0.0, resolution=pixels, x_source="latents",
            timestep_sampling="uniform", preservation_weight=1.0, seed=args.seed,
            precision="bf16" if device.type == "cuda" else "fp32", log_every=total,
        )

        def hook(optimizer, *_):
            if len(marks) + 1 in (args.warmup, total):
                sync()
            marks.append(time.perf_counter())

        logged = []
        mem.baseline()
        start = time.perf_counter()
        handle = register_optimizer_step_post_hook(hook)
        try:
            erase(denoiser, concepts, config, user_latents=latents, callback=logged.append)
        finally:
            handle.remove()
        final_loss = logged[-1].loss
    else:
        abar = sched.alphas_cumprod.float().cpu()
        target_c = encode([TARGET_PROMPT], unet, seq_len, pixels, args.seed, device, weights_dtype)
        anchor_c = encode([ANCHOR_PROMPT], unet, seq_len, pixels, args.seed, device, weights_dtype)
        keep_c = encode(keep, unet, seq_len, pixels, args.seed, device, weights_dtype) if keep else None
        x0 = latents.float().cpu()
        mem.baseline()
        start = time.perf_counter()
        # --- the research-script loop: two full models, fp32, one forward per term, sync every step
        frozen = copy.deepcopy(unet).requires_grad_(False).eval()
        trained = unet.requires_grad_(False).train()
        params = [p for n, p in trained.named_parameters() if is_kv(n)]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=args.lr)
        gen = torch.Generator().manual_seed(args.seed)  # the engine's draws, in the engine's order
        rows = lambda c, i: {k: v[i.to(v.device)] for k, v in c.items()}  # noqa: E731
        channels = x0.shape[1]
        losses = []
        for _ in range(total):
            opt.zero_grad()
            n = torch.randint(0, x0.shape[0], (args.batch,), generator=gen)
            t = torch.randint(0, abar.shape[0], (args.batch,), generator=gen)
            noise = torch.randn(x0[n].shape, generator=gen)
            pair = torch.randint(0, 1, (args.batch,), generator=gen)
            keep_i = torch.randint(0, len(keep), (args.batch,), generator=gen) if keep else None
            a = abar[t].view(-1, 1, 1, 1)
            x_t = (a.sqrt() * x0[n] + (1 - a).sqrt() * noise).to(device)
            t = t.to(device)
            with torch.no_grad():
                target = unet_call(frozen, x_t, t, rows(anchor_c, pair))
                keep_target = unet_call(frozen, x_t, t, rows(keep_c, keep_i)) if keep else None
            pred = unet_call(trained, x_t, t, rows(target_c, pair))
            # sum over channels, mean over positions and batch: the engine's S (channels x nn.MSELoss)
            loss = channels * torch.nn.functional.mse_loss(pred, target)
            if keep:
                pred_keep = unet_call(trained, x_t, t, rows(keep_c, keep_i))
                loss = loss + channels * torch.nn.functional.mse_loss(pred_keep, keep_target)
            loss.backward()
            losses.append(loss.item())
            opt.step()
            if len(marks) + 1 in (args.warmup, total):
                sync()
            marks.append(time.perf_counter())
        final_loss = losses[-1]

    peak = mem.peak()
    times = [b - a for a, b in zip(marks[args.warmup - 1:], marks[args.warmup:])] if args.warmup else []
    window = marks[-1] - marks[args.warmup - 1] if args.warmup else marks[-1] - start
    info.update(
        mean_step_s=window / args.steps,
        warmup_s=(marks[args.warmup - 1] - start) if args.warmup else 0.0,
        step_times_s=times if device.type == "cpu" else [],  # per step only where the host is in sync
        median_step_s=statistics.median(times) if times and device.type == "cpu" else None,
        min_step_s=min(times) if times and device.type == "cpu" else None,
        final_loss=final_loss, mem_method=mem.method, base_bytes=mem.base, peak_bytes=peak,
        peak_over_model_bytes=peak - mem.base,
    )
    if device.type == "cuda":
        info["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return info


# ---------------------------------------------------------------------------------------- report


def device_description(device: str, sides: list[dict]) -> str:
    if device == "cuda":
        names = sorted({s.get("device_name", "?") for s in sides if s})
        return ", ".join(names)
    model = "unknown CPU"
    try:
        model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).strip()
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = sorted({s["threads"] for s in sides if s and "threads" in s})
    return f"{model}, {cores} cores available, torch threads {','.join(map(str, threads)) or '?'}"


def fmt_bytes(b) -> str:
    if b is None:
        return "-"
    return f"{b / 2**30:.2f} GiB" if abs(b) >= 2**30 else f"{b / 2**20:.0f} MiB"


def fmt_s(s) -> str:
    return "-" if s is None else (f"{s:.3f}" if s < 10 else f"{s:.1f}")


def summarise(device: str, runs: dict) -> tuple[list[dict], str]:
    rows, lines = [], []
    lines.append("| model | side | precision | batch | latent | timed steps x runs | s/step | it/s | s per 200 steps "
                 "| fastest step (s) | peak memory | peak over model | final loss |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, sides in runs.items():
        for name in ("engine", "naive"):
            s = sides.get(name) or {}
            if "error" in s or not s:
                lines.append(f"| {model} | {name} | - | - | - | - | failed: {s.get('error', 'no result')} "
                             "| | | | | | |")
                continue
            m = s["mean_step_s"]
            lines.append(f"| {model} | {name} | {s['precision']} ({s['weights']} weights) | {s['batch']} "
                         f"| {s['latent']}x{s['latent']} | {s['steps']} x {len(s.get('repeats_mean_step_s') or [1])} "
                         f"| {fmt_s(m)} | {1 / m:.2f} "
                         f"| {fmt_s(200 * m)} | {fmt_s(s.get('min_step_s'))} | {fmt_bytes(s['peak_bytes'])} "
                         f"| {fmt_bytes(s['peak_over_model_bytes'])} | {s['final_loss']:.6g} |")
    lines.append("")
    lines.append("| model | speed-up (naive s/step / engine s/step) | memory ratio, peak over model "
                 "(engine / naive) | memory ratio, whole peak (engine / naive) | final loss rel. diff | targets |")
    lines.append("|---|---|---|---|---|---|")
    for model, sides in runs.items():
        e, n = sides.get("engine") or {}, sides.get("naive") or {}
        if "mean_step_s" not in e or "mean_step_s" not in n:
            lines.append(f"| {model} | - | - | - | - | not measured |")
            continue
        speed = n["mean_step_s"] / e["mean_step_s"]
        mem_over = e["peak_over_model_bytes"] / n["peak_over_model_bytes"] if n["peak_over_model_bytes"] > 0 else None
        mem_abs = e["peak_bytes"] / n["peak_bytes"]
        loss_diff = abs(e["final_loss"] - n["final_loss"]) / max(abs(n["final_loss"]), 1e-30)
        verdicts = []
        if device == "cpu":
            verdicts.append(f"speed >= {CPU_TARGETS['speedup']:g}x: {'MET' if speed >= CPU_TARGETS['speedup'] else 'NOT MET'}")
            ok = mem_over is not None and mem_over <= CPU_TARGETS["memory"]
            verdicts.append(f"memory (over model) <= {CPU_TARGETS['memory']:g}x: {'MET' if ok else 'NOT MET'}")
            ok_abs = mem_abs <= CPU_TARGETS["memory"]
            verdicts.append(f"memory (whole) <= {CPU_TARGETS['memory']:g}x: {'MET' if ok_abs else 'NOT MET'}")
        elif (model == GPU_TARGETS["model"] and e["latent"] == GPU_TARGETS["latent"]
              and e["batch"] == GPU_TARGETS["batch"]):
            s200 = 200 * e["mean_step_s"]
            verdicts.append(f"200 steps <= {GPU_TARGETS['seconds_200']:g} s: "
                            f"{'MET' if s200 <= GPU_TARGETS['seconds_200'] else 'NOT MET'} ({s200:.1f} s)")
            verdicts.append(f"peak <= 6 GB: {'MET' if e['peak_bytes'] <= GPU_TARGETS['peak_bytes'] else 'NOT MET'} "
                            f"({e['peak_bytes'] / GB:.2f} GB)")
        rows.append(dict(model=model, speedup=speed, memory_ratio_over_model=mem_over, memory_ratio_whole=mem_abs,
                         final_loss_rel_diff=loss_diff, targets=verdicts))
        lines.append(f"| {model} | {speed:.2f}x | {'-' if mem_over is None else f'{mem_over:.3f}'} | {mem_abs:.3f} "
                     f"| {loss_diff:.1e} | {'; '.join(verdicts) or '-'} |")
    return rows, "\n".join(lines)


def write_results(out: Path, payload: dict, table: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    sides = [s for r in payload["runs"].values() for s in r.values() if s and "mem_method" in s]
    methods = sorted({s["mem_method"] for s in sides})
    md = [
        f"# Engine vs naive erasure loop ({payload['device_kind']})",
        "",
        f"- command: `{payload['command']}`",
        f"- date: {payload['date']}",
        f"- device: {payload['device']}",
        f"- software: Python {payload['python']}, torch {payload['torch']}, diffusers {payload['diffusers']}, "
        f"commit {payload['commit']}",
        f"- load average (1, 5, 15 min) at start: {', '.join(payload['loadavg'])}; at the end: "
        f"{', '.join(payload['loadavg_end'])}",
        f"- memory method: {'; '.join(methods)}",
        "",
        table,
        "",
        "Step time: mean of the timed steps after the warm-up steps (with several runs per side, alternating "
        "engine/naive, the fastest run's mean; every run's mean is in the .json); it/s = 1 / s/step; s per 200 steps = 200 x "
        "s/step (training only: no setup, no sampling). Peak over model: the peak minus the memory held once the "
        "UNet, prompt encodings and latents exist (the naive side's second model copy counts in it). Fastest "
        "step: the quickest single timed step (CPU only), less sensitive to other processes on the machine. Each "
        "side ran in its own subprocess, one after the other. See benchmarks/README.md.",
        "",
    ]
    out.write_text("\n".join(md))
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------------------------------- main


def _loadavg() -> list[str]:
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", action="append", choices=MODELS + ("all",),
                   help="repeatable; 'all' = demo, sd15 on cpu, demo, sd15, sdxl on cuda (default: all)")
    p.add_argument("--steps", type=int, help="timed steps per side (default per device and model)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps before the timed ones (default 1-5)")
    p.add_argument("--batch", type=int, help="erasure samples per step (plus as many keep samples)")
    p.add_argument("--latent", type=int, help="latent side (pixels / 8)")
    p.add_argument("--keep", type=int, default=1, choices=range(len(KEEP_PROMPTS) + 1),
                   help="preservation prompts (0: no preservation term)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine-weights", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="dtype of the UNet weights on the engine side (the naive side is always fp32)")
    p.add_argument("--repeats", type=int, help="runs per side, alternating engine/naive; the fastest is "
                   "reported (default: 3 for the CPU demo and toy, else 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads per side (default: torch's own); on a shared "
                   "machine 1 gives steadier numbers")
    p.add_argument("--sides", default="engine,naive", help="which sides to run, comma-separated")
    p.add_argument("--side-timeout", type=float, default=1800, help="seconds per side subprocess")
    p.add_argument("--out", type=Path, help="write the table to this .md file and the raw numbers next to it (.json)")
    p.add_argument("--side", choices=("engine", "naive"), help=argparse.SUPPRESS)
    p.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.side:  # child: one side, one model
        if not args.model or len(args.model) != 1 or args.model[0] not in MODELS:
            raise SystemExit("--side runs exactly one --model (demo, toy, sd15 or sdxl)")
        args.model = args.model[0]
        info = run_side(args)
        args.result_file.write_text(json.dumps(info))
        return 0

    models = []
    for m in args.model or ["all"]:
        for name in (ALL_MODELS[args.device] if m == "all" else (m,)):
            if name not in models:
                models.append(name)
    command = "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "bench_engine.py",
                                      *sys.argv[1:]])
    loadavg = _loadavg()
    runs: dict[str, dict] = {}
    for model in models:
        d = DEFAULTS[(args.device, model)]
        cfg = {k: getattr(args, k) if getattr(args, k) is not None else d[k]
               for k in ("batch", "latent", "steps", "warmup", "repeats")}
        if cfg["warmup"] < 1 or cfg["steps"] < 1 or cfg["repeats"] < 1:
            raise SystemExit("--warmup, --steps and --repeats must be at least 1")
        runs[model] = {}
        attempts: dict[str, list] = {}
        sides_to_run = [s.strip() for s in args.sides.split(",") if s.strip()]
        for repeat, side in [(r, s) for r in range(cfg["repeats"]) for s in sides_to_run]:
            print(f"[{model}/{side} {repeat + 1}/{cfg['repeats']}] batch {cfg['batch']}, latent {cfg['latent']}, "
                  f"{cfg['warmup']} warm-up + {cfg['steps']} timed steps ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                res = Path(tmp) / "result.json"
                child = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--device", args.device,
                         "--model", model, "--steps", str(cfg["steps"]), "--warmup", str(cfg["warmup"]),
                         "--batch", str(cfg["batch"]), "--latent", str(cfg["latent"]), "--keep", str(args.keep),
                         "--lr", str(args.lr), "--seed", str(args.seed), "--engine-weights", args.engine_weights,
                         "--result-file", str(res)] + (["--threads", str(args.threads)] if args.threads else [])
                env = {**os.environ, "HF_HUB_OFFLINE": "1"}
                if args.threads:
                    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
                t0 = time.perf_counter()
                try:
                    proc = subprocess.run(child, cwd=ROOT, timeout=args.side_timeout, env=env,
                                          capture_output=True, text=True)
                    if proc.returncode == 0 and res.exists():
                        result = json.loads(res.read_text())
                    else:
                        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
                        errs = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
                        why = (errs or lines or [""])[-1][:200] or f"exit code {proc.returncode}"
                        if proc.returncode < 0:
                            why = f"killed by signal {-proc.returncode} (out of memory?) {why}"
                        result = {"error": why}
                        print(proc.stderr[-3000:], file=sys.stderr)
                except subprocess.TimeoutExpired:
                    result = {"error": f"timed out after {args.side_timeout:g} s"}
                attempts.setdefault(side, []).append(result)
                done = f"ERROR {result['error']}" if "error" in result else f"{result['mean_step_s']:.3f} s/step"
                print(f"    {done} ({time.perf_counter() - t0:.0f} s wall)", file=sys.stderr, flush=True)
        for side, results in attempts.items():
            ok = [r for r in results if "error" not in r]
            best = dict(min(ok, key=lambda r: r["mean_step_s"])) if ok else dict(results[-1])
            best["repeats_mean_step_s"] = [r.get("mean_step_s") for r in results]
            best["repeats_peak_bytes"] = [r.get("peak_bytes") for r in results]
            runs[model][side] = best

    sides = [s for r in runs.values() for s in r.values() if s and "error" not in s]
    rows, table = summarise(args.device, runs)
    print(table)
    if args.out:
        import diffusers
        import torch

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or "?"
        payload = dict(
            command=command, date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            device_kind=args.device, device=device_description(args.device, sides),
            python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
            commit=commit, loadavg=loadavg, loadavg_end=_loadavg(),
            summary=rows, runs=runs,
        )
        write_results(args.out, payload, table)
        print(f"wrote {args.out} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
