"""The main job: erase a concept from the demo model inside a real ComfyUI graph, headless, and show it.

    python -m unlearn_demo run --concept circle --out out/demo

It copies a ComfyUI host (see :mod:`unlearn_demo.headless`), writes the demo checkpoint into its
``models/checkpoints``, starts it on loopback and queues one API graph: Load Checkpoint -> Load
Concept Set -> Divergence Unlearn -> Save Erasure and Erasure Report, and for every prompt two
KSamplers with the same seed, one on the original MODEL and one on the erased MODEL. The images come
back through ComfyUI's SaveImage; the shipped attribute classifier reads them. It writes

- ``grid.png``: before | after for the target prompts and the kept prompts,
- ``report.md`` and ``report.json``: how often the classifier sees each prompt's shape and colour,
  before and after, and the Erasure Report's prediction-space numbers.

With ``--family flux`` the same graph runs on the flow demo (a small rectified-flow transformer in Flux's
layout, :mod:`unlearn_demo.flow_model`), which the demo's own node Load Flow Demo Model gives as a ComfyUI Flux
MODEL; CLIP and VAE still come from the demo checkpoint, and the images are drawn with Euler (flow matching's
sampler). It needs a ComfyUI with Flux (COMFYUI_PATH; the bundled 2024 host predates Flux). With
``--family sd_contextual`` it runs on the shapes demo whose CLIP-L mixes the prompt (two contextual layers,
:mod:`unlearn_demo.clip_text`): every row of a prompt's conditioning depends on the words before it.

With ``--ckpt`` (your own SD1.x/SDXL checkpoint) and ``--prompt``/``--keep`` it runs the same graph
on that model; the report then has the images and the prediction-space numbers, no classifier.
Every option is checked before ComfyUI starts; while ComfyUI works, the job prints each phase in the
order ComfyUI runs them (usually the erasure with its steps and loss, then the before and after images of each
prompt) with the seconds left. ComfyUI runs on
the GPU when torch sees CUDA (``--cpu`` forces the CPU). ``--quick`` runs the same graph with 10
erasure steps, one seed and 4 sampler steps (a smoke test; CI runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unlearn_core.atomic_write import write_atomically
from unlearn_core.concepts import ConceptSetError, parse_concept_text
from unlearn_core.erasure import Erasure
from unlearn_core.plot import comparison_grid
from unlearn_core.settings import declared, defaults
from unlearn_core.targets import TARGET_MODES
from unlearn_core.trainer import EraseConfig, divergence_names

from .assemble import CHECKPOINT_NAME, write_checkpoint
from .model import CLIP_SHAPES_WEIGHTS, WEIGHTS
from .headless import (ComfyError, ComfyServer, MissingRequirements, check_host_requirements, host_has_flux,
                       host_label, prepare_host, use_cpu)
from .progress import JobProgress
from .shapes import BACKGROUNDS, COLORS, SHAPES

CELL = 96  # grid cell size in pixels (64-pixel samples are upscaled, nearest)
DEMO_POOL_STEPS = 10  # sampler steps of the erasure's anchor pool: the 64-pixel demo needs no more


@dataclass
class JobOptions:
    concept: str = "circle"
    anchor: str = ""  # default: "shape" for a shape; the same prompt without the colour for a colour
    divergence: str = EraseConfig.divergence
    alpha: float = EraseConfig.alpha
    target_mode: str = EraseConfig.target_mode
    steps: int = EraseConfig.steps
    learning_rate: float = EraseConfig.learning_rate
    seeds: int = 6
    sample_steps: int = 15
    cfg: float = 4.0
    seed: int = 0
    ckpt: str | None = None
    prompts: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    resolution: int = 64
    cpu: bool = False  # run ComfyUI on the CPU even when there is a GPU
    family: str = "sd"  # the demo model: "sd" (SD1.5 layout), "sd_contextual" (its CLIP mixes words), "flux"

    @property
    def demo(self) -> bool:
        return self.ckpt is None


def demo_prompts(concept: str, anchor: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(concept-set text, target prompts with the attribute they should show, kept prompts) for the demo model."""
    if concept in SHAPES:
        anchor = anchor or "shape"
        targets = [f"a {c} {concept}" for c in COLORS]
        others = [s for s in SHAPES if s != concept]
        keep = [f"a {COLORS[(i + j) % len(COLORS)]} {s}" for i, s in enumerate(others) for j in (0, 2)]
        pairs = [(t, t.replace(concept, anchor)) for t in targets] + [(f"a {concept}", f"a {anchor}")]
    elif concept in COLORS:
        targets = [f"a {concept} {s}" for s in SHAPES]
        others = [c for c in COLORS if c != concept]
        keep = [f"a {c} {SHAPES[(i + j) % len(SHAPES)]}" for i, c in enumerate(others) for j in (0, 2)]
        pairs = [(t, t.replace(f"{concept} ", f"{anchor} " if anchor else "")) for t in targets]
        pairs.append((f"a {concept} shape", f"a {anchor} shape" if anchor else "a shape"))
    else:
        raise ValueError(f"--concept {concept!r} is not a demo attribute; choose a shape {SHAPES} or a colour "
                         f"{COLORS}, or pass --ckpt with your own model")
    lines = [f"{t} -> {a}" for t, a in pairs] + [f"keep: {k}" for k in keep]
    return "\n".join(lines) + "\n", [(t, concept) for t in targets], keep


# the job's options that are erase settings, by their flag here; the declaration checks them (settings.check)
ERASE_FLAGS = {"divergence": "--divergence", "alpha": "--alpha", "target_mode": "--target-mode", "steps": "--steps",
               "learning_rate": "--lr", "resolution": "--resolution"}
# the job's own options -> (command-line flag, smallest, largest)
RANGES = {"seeds": ("--seeds", 1, 4096), "sample_steps": ("--sample-steps", 1, 10000), "cfg": ("--cfg", 0.0, 100.0),
          "seed": ("--seed", 0, 0xFFFFFFFF)}
QUICK = {"steps": 10, "seeds": 1, "sample_steps": 4}  # --quick: every node of the graph, a fraction of the work
# --family -> the images' (sampler, scheduler): DDIM for the UNet; Euler, flow matching's own, for the transformer
FAMILIES = {"sd": ("ddim", "ddim_uniform"), "sd_contextual": ("ddim", "ddim_uniform"), "flux": ("euler", "simple")}
# --family -> the folder of the demo checkpoint's parts (the flow demo takes CLIP and VAE from the shapes demo's)
DEMO_PARTS = {"sd": WEIGHTS, "sd_contextual": CLIP_SHAPES_WEIGHTS, "flux": WEIGHTS}
def check_options(opts: JobOptions) -> None:
    """Raise ValueError naming the first bad option and what it accepts; nothing has started yet."""
    for s in declared(EraseConfig):
        problem = s.problem(getattr(opts, s.field)) if s.field in ERASE_FLAGS else None
        if problem:
            raise ValueError(f"{ERASE_FLAGS[s.field]}: {problem}")
    for name, (flag, low, high) in RANGES.items():
        value = getattr(opts, name)
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"{flag} {value}: must be between {low:g} and {high:g}")
    if opts.resolution % 8:
        raise ValueError(f"--resolution {opts.resolution}: must be a multiple of 8 (latents are 1/8 of the image)")
    if opts.family not in FAMILIES:
        raise ValueError(f"--family {opts.family!r}: choose one of {', '.join(FAMILIES)}")
    if opts.family != "sd" and not opts.demo:
        raise ValueError(f"--family {opts.family} runs a demo model; with --ckpt the model is your checkpoint: "
                         "leave --family out")
    if opts.family == "flux":
        if not host_has_flux():
            raise ValueError(f"--family flux needs a ComfyUI that has Flux (August 2024 or later); {host_label()} "
                             "has none: point COMFYUI_PATH at a current ComfyUI checkout")
    if not opts.demo:
        ckpt = Path(opts.ckpt).expanduser()
        if not ckpt.is_file() or ckpt.suffix != ".safetensors":
            raise ValueError(f"--ckpt {opts.ckpt}: expected an existing .safetensors checkpoint file")
        if not opts.prompts:
            raise ValueError("with --ckpt, give the prompts to draw with --prompt (and kept ones with --keep)")
    try:
        parse_concept_text(job_prompts(opts)[0], name="--concept/--anchor/--keep")
    except ConceptSetError as e:
        raise ValueError(str(e)) from None


def job_prompts(opts: JobOptions) -> tuple[str, list[str], list[str]]:
    """(concept-set text, target prompts, kept prompts) of the job."""
    if opts.demo:
        concept_text, targets, keep = demo_prompts(opts.concept, opts.anchor)
        return concept_text, [t for t, _ in targets], keep
    return f"{opts.concept} -> {opts.anchor}\n" + "".join(f"keep: {k}\n" for k in opts.keep), opts.prompts, opts.keep


def build_graph(opts: JobOptions, ckpt_name: str, concept_text: str, prompts: list[str]) -> dict:
    """The API-format graph: erase, save, report, and a before/after KSampler pair per prompt."""
    flux = opts.family == "flux"
    model = ["flow", 0] if flux else ["ckpt", 0]
    sampler, scheduler = FAMILIES[opts.family]
    graph: dict = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        **({"flow": {"class_type": "UnlearnDemoLoadFlowModel", "inputs": {}}} if flux else {}),
        "concepts": {"class_type": "DivergenceUnlearnLoadConceptSet",
                     "inputs": {"text": concept_text, "preset": "none", "file": "none"}},
        "unlearn": {"class_type": "DivergenceUnlearn", "inputs": {
            "model": model, "clip": ["ckpt", 1], "concepts": ["concepts", 0],
            **defaults(EraseConfig), "divergence": opts.divergence, "alpha": opts.alpha,
            "target_mode": opts.target_mode, "steps": opts.steps, "learning_rate": opts.learning_rate,
            "resolution": opts.resolution, "sample_steps": DEMO_POOL_STEPS, "seed": opts.seed}},
        "save": {"class_type": "DivergenceUnlearnSaveErasure",
                 "inputs": {"erasure": ["unlearn", 1], "filename_prefix": "erasures/demo"}},
        "report": {"class_type": "DivergenceUnlearnErasureReport", "inputs": {
            "model": model, "clip": ["ckpt", 1], "erasure": ["unlearn", 1], "concepts": ["concepts", 0],
            "resolution": opts.resolution, "probes": 4, "seed": 0}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": opts.resolution, "height": opts.resolution, "batch_size": opts.seeds}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
    }
    for i, prompt in enumerate(prompts):
        graph[f"prompt{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["ckpt", 1]}}
        for when, sampled in (("before", model), ("after", ["unlearn", 0])):
            graph[f"{when}{i}"] = {"class_type": "KSampler", "inputs": {
                "model": sampled, "seed": opts.seed, "steps": opts.sample_steps, "cfg": opts.cfg,
                "sampler_name": sampler, "scheduler": scheduler, "positive": [f"prompt{i}", 0],
                "negative": ["negative", 0], "latent_image": ["latent", 0], "denoise": 1.0}}
            graph[f"{when}{i}_decode"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{when}{i}", 0],
                                                                                 "vae": ["ckpt", 2]}}
            graph[f"{when}{i}_save"] = {"class_type": "SaveImage", "inputs": {
                "images": [f"{when}{i}_decode", 0], "filename_prefix": f"demo/{when}_{i:02d}"}}
    return graph


TITLES = {"ckpt": "Load Checkpoint (demo shapes model)", "concepts": "Load Concept Set", "unlearn": "Divergence Unlearn",
          "save": "Save Erasure", "report": "Erasure Report", "latent": "Empty Latent Image",
          "negative": "Negative prompt (empty)"}


def demo_workflow() -> dict:
    """``workflows/api/demo_erase_circle.json``: the job's graph for one target and one kept prompt, numbered ids."""
    opts = JobOptions()
    text, _, _ = demo_prompts(opts.concept, opts.anchor)
    graph = build_graph(opts, CHECKPOINT_NAME, text, ["a red circle", "a blue square"])
    number = {old: str(i) for i, old in enumerate(graph, 1)}
    out = {}
    for old, node in graph.items():
        inputs = {k: [number[v[0]], v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        title = TITLES.get(old) or f"{node['class_type']} ({old.replace('_', ' ')})"
        out[number[old]] = {"class_type": node["class_type"], "inputs": inputs, "_meta": {"title": title}}
    return out


def _images(entry: dict, node: str, output_dir: Path) -> list[Image.Image]:
    files = entry["outputs"][node]["images"]
    return [Image.open(output_dir / f["subfolder"] / f["filename"]).convert("RGB") for f in files]


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])).permute(0, 3, 1, 2)


def classify(prompts: list[str], before: list[list[Image.Image]], after: list[list[Image.Image]]) -> list[dict]:
    """Per prompt: the fraction of images whose shape / colour the classifier reads as the prompt's, before and after."""
    from .model import load_classifier

    clf = load_classifier()
    rows = []
    for prompt, b, a in zip(prompts, before, after):
        words = prompt.split()
        row = {"prompt": prompt}
        for attr, values in (("shape", SHAPES), ("color", COLORS), ("background", BACKGROUNDS)):
            named = next((w for w in words if w in values), None)
            if named is None:
                continue
            for when, images in (("before", b), ("after", a)):
                pred = clf.predict(_to_tensor(images))[attr]
                row[f"{attr}_{when}"] = 100.0 * sum(p == named for p in pred) / len(pred)
        rows.append(row)
    return rows


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values)) if values else float("nan")


def summarise(concept: str, targets: list[dict], kept: list[dict]) -> dict:
    """The headline numbers: the concept recognised before/after, and what the other prompts keep."""
    attr = "shape" if concept in SHAPES else "color"
    other = "color" if attr == "shape" else "shape"
    s = {"concept": concept, "attribute": attr,
         "target_recognised_before": _mean(targets, f"{attr}_before"),
         "target_recognised_after": _mean(targets, f"{attr}_after"),
         f"target_{other}_kept_before": _mean(targets, f"{other}_before"),
         f"target_{other}_kept_after": _mean(targets, f"{other}_after"),
         f"kept_{attr}_before": _mean(kept, f"{attr}_before"), f"kept_{attr}_after": _mean(kept, f"{attr}_after"),
         f"kept_{other}_before": _mean(kept, f"{other}_before"), f"kept_{other}_after": _mean(kept, f"{other}_after")}
    return s


def grid(prompts: list[str], before: list[list[Image.Image]], after: list[list[Image.Image]]) -> Image.Image:
    n = len(before[0])
    rows = [(p, [im.resize((CELL, CELL), Image.NEAREST) for im in b + a]) for p, b, a in zip(prompts, before, after)]
    return comparison_grid(rows, [f"before {i}" for i in range(n)] + [f"after {i}" for i in range(n)],
                           label_width=None, divider_after=n)


def markdown(opts: JobOptions, result: dict) -> str:
    model = {"flux": "the flow demo model (Flux layout)",
             "sd_contextual": "the demo model with a contextual CLIP"}.get(opts.family, "the demo model")
    lines = [f"# Erasing '{opts.concept}' from {model}" if opts.demo else "# Erasure report",
             "", f"Host: {result['host']}. Divergence {opts.divergence} ({opts.target_mode}), at most {opts.steps} "
             f"steps: {result['stopped']}; "
             f"lr {opts.learning_rate}; {opts.seeds} seeds per prompt, {opts.sample_steps} "
             f"{FAMILIES[opts.family][0]} steps, cfg {opts.cfg}. "
             f"Erasure training {result['erase_seconds']:.1f} s; whole graph {result['graph_seconds']:.1f} s.", ""]
    if opts.demo:
        s = result["summary"]
        attr = s["attribute"]
        other = "color" if attr == "shape" else "shape"
        lines += [f"- **'{opts.concept}' recognised in target images: {s['target_recognised_before']:.0f}% before, "
                  f"{s['target_recognised_after']:.0f}% after.**",
                  f"- Their {other}: {s[f'target_{other}_kept_before']:.0f}% -> {s[f'target_{other}_kept_after']:.0f}%.",
                  f"- Kept prompts, {attr}: {s[f'kept_{attr}_before']:.0f}% -> "
                  f"{s[f'kept_{attr}_after']:.0f}%; {other}: {s[f'kept_{other}_before']:.0f}% -> "
                  f"{s[f'kept_{other}_after']:.0f}%.", "",
                  "| prompt | kind | shape before | shape after | colour before | colour after |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for kind, rows in (("target", result["targets"]), ("kept", result["kept"])):
            for r in rows:
                lines.append(f"| {r['prompt']} | {kind} | {r.get('shape_before', float('nan')):.0f}% | "
                             f"{r.get('shape_after', float('nan')):.0f}% | {r.get('color_before', float('nan')):.0f}% | "
                             f"{r.get('color_after', float('nan')):.0f}% |")
        lines.append("")
    lines += ["Prediction space (Erasure Report node):", "", "```", result["erasure_report"].strip(), "```", "",
              "![before and after](grid.png)", ""]
    return "\n".join(lines)


def run(opts: JobOptions, out: Path, workdir: Path | None = None, timeout: float = 1800.0,
        progress: JobProgress | None = None) -> dict:
    """Run the job; write grid.png, report.md, report.json under ``out``; return the report dict.

    Options and the host's Python packages are checked before anything starts (ValueError,
    :class:`~unlearn_demo.headless.MissingRequirements`); a prompt ComfyUI refuses or fails raises
    :class:`~unlearn_demo.headless.ComfyError` with ComfyUI's message. ``progress`` follows the graph live.
    """
    check_options(opts)
    check_host_requirements()
    concept_text, target_prompts, keep = job_prompts(opts)
    prompts = target_prompts + keep
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="divergence-unlearn-demo-", dir=workdir) as tmp:
        tmp = Path(tmp)
        root = prepare_host(tmp)
        checkpoints = root / "models" / "checkpoints"
        if opts.demo:
            ckpt_name = write_checkpoint(checkpoints, DEMO_PARTS[opts.family]).name
        else:
            src = Path(opts.ckpt).expanduser().resolve()
            (checkpoints / src.name).symlink_to(src)
            ckpt_name = src.name
        server = ComfyServer(root, tmp, cpu=use_cpu(opts.cpu))
        print(f"[demo] host {host_label()} prepared in {root}; starting ComfyUI on the "
              f"{'CPU' if server.cpu else 'GPU'}", flush=True)
        try:
            server.start()
            print(f"[demo] ComfyUI listening on {server.url}; queueing the graph ({len(prompts)} prompts x "
                  f"{opts.seeds} seeds, before and after)", flush=True)
            start = time.time()
            entry = server.run(build_graph(opts, ckpt_name, concept_text, prompts), timeout=timeout,
                               on_event=progress)
            graph_seconds = time.time() - start
            before = [_images(entry, f"before{i}_save", server.output_dir) for i in range(len(prompts))]
            after = [_images(entry, f"after{i}_save", server.output_dir) for i in range(len(prompts))]
            erasure_report = entry["outputs"]["report"]["text"][0]
            saved = entry["outputs"]["save"]["text"][0]
            saved_path = root / "models" / "loras" / saved
            write_atomically(out / "erasure.safetensors", lambda tmp: shutil.copyfile(saved_path, tmp))
            made = Erasure.load(out / "erasure.safetensors").metadata  # how the run ended, as the file records it
        finally:
            server.stop()
            shutil.copyfile(server.log_path, out / "comfyui.log")

    grid(prompts, before, after).save(out / "grid.png")
    result = {"host": host_label(), "options": opts.__dict__, "prompts": prompts, "graph_seconds": graph_seconds,
              "erase_seconds": made.seconds, "stop": made.stop.value, "stopped": made.stopped,
              "erasure_report": erasure_report}
    if opts.demo:
        rows = classify(prompts, before, after)
        result["targets"], result["kept"] = rows[: len(target_prompts)], rows[len(target_prompts):]
        result["summary"] = summarise(opts.concept, result["targets"], result["kept"])
    (out / "report.json").write_text(json.dumps(result, indent=1))
    (out / "report.md").write_text(markdown(opts, result))
    return result


def main(argv: list[str] | None = None) -> int:
    d = JobOptions()
    p = argparse.ArgumentParser(prog="python -m unlearn_demo run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", default=d.concept, help=f"a demo shape {SHAPES} or colour {COLORS}; with --ckpt, "
                                                        "any concept text (default: %(default)s)")
    p.add_argument("--anchor", default=d.anchor,
                   help="what the concept becomes (demo: 'shape' for a shape, no colour for a colour)")
    p.add_argument("--divergence", default=d.divergence,
                   help=f"one of: {', '.join(divergence_names())} (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="alpha of --divergence alpha (default: %(default)s)")
    p.add_argument("--target-mode", default=d.target_mode,
                   help=f"one of: {', '.join(TARGET_MODES)} (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"the most erasure steps; erase_until ends it earlier (default: {d.steps})")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="erasure learning rate (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=d.seeds,
                   help="images per prompt, before and after (default: %(default)s)")
    p.add_argument("--sample-steps", type=int, default=d.sample_steps,
                   help="sampler steps per image (default: %(default)s)")
    p.add_argument("--cfg", type=float, default=d.cfg,
                   help="classifier-free guidance scale of the images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the erasure and of the images (default: %(default)s)")
    p.add_argument("--family", default=d.family, choices=tuple(FAMILIES),
                   help="the demo model: sd (SD1.5-layout UNet), sd_contextual (the same shapes, with a CLIP-L whose "
                        "layers mix the prompt), or flux (Flux-layout flow transformer; needs a ComfyUI with Flux, "
                        "COMFYUI_PATH) (default: %(default)s)")
    p.add_argument("--ckpt", default=None, help="your own SD1.x/SDXL .safetensors checkpoint instead of the demo")
    p.add_argument("--prompt", action="append", default=[], help="with --ckpt: a prompt showing the concept (repeat)")
    p.add_argument("--keep", action="append", default=[], help="with --ckpt: a prompt to preserve (repeat)")
    p.add_argument("--resolution", type=int, default=None, help="image side in pixels (demo: 64; --ckpt: 512)")
    p.add_argument("--out", type=Path, default=Path("out/demo"),
                   help="folder for grid, report and erasure (default: %(default)s)")
    p.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU even when a CUDA GPU is there")
    p.add_argument("--quick", action="store_true",
                   help=f"the same graph with {QUICK['steps']} erasure steps, {QUICK['seeds']} seed and "
                        f"{QUICK['sample_steps']} sampler steps (a smoke test: the erasure is not complete)")
    a = p.parse_args(argv)
    concept = a.concept if a.ckpt else a.concept.strip().lower()  # the demo's words are lower case: Circle = circle
    opts = JobOptions(concept=concept, anchor=a.anchor, divergence=a.divergence, alpha=a.alpha,
                      target_mode=a.target_mode, learning_rate=a.lr, seeds=a.seeds,
                      steps=a.steps if a.steps is not None else d.steps,
                      sample_steps=a.sample_steps, cfg=a.cfg, seed=a.seed, ckpt=a.ckpt, prompts=a.prompt, keep=a.keep,
                      resolution=a.resolution or (512 if a.ckpt else 64), cpu=a.cpu,
                      family=a.family)
    if a.quick:
        opts = replace(opts, **QUICK)
    start = time.time()
    try:
        _, targets, keep = job_prompts(opts)
        run(opts, a.out, progress=JobProgress(len(targets) + len(keep), opts.sample_steps))
    except (ValueError, MissingRequirements) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ComfyError as e:
        print(f"error: ComfyUI: {e}\n(the server's whole log: {a.out / 'comfyui.log'})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the server was stopped on the way out (run's finally)
        print(f"\n[demo] interrupted; ComfyUI was stopped (its log, if it had started: {a.out / 'comfyui.log'})",
              file=sys.stderr)
        return 130
    summary = [line for line in (a.out / "report.md").read_text().splitlines() if line.startswith(("- ", "Host:"))]
    print("\n".join(summary))
    print(f"[demo] grid:   {a.out / 'grid.png'}\n[demo] report: {a.out / 'report.md'} and {a.out / 'report.json'}\n"
          f"[demo] erasure file (loads with ComfyUI's LoraLoaderModelOnly): {a.out / 'erasure.safetensors'}\n"
          f"[demo] total {time.time() - start:.0f} s", file=sys.stderr)
    return 0
