"""Command line on diffusers pipeline folders: ``divergence-unlearn {erase,generate,probe} ...``.

The same as ``python -m unlearn_core ...``. ``erase`` trains an erasure file from a concept set,
``generate`` draws a before/after grid with an erasure file, ``probe`` attacks an erasure file
(``unlearn_core.attacks``) and says how far the attack brings the erased targets back. (A tiny pipeline
with random weights to try them on: ``python -m unlearn_demo toy-pipeline FOLDER``.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .attacks import AttackConfig
from .concepts import ConceptSetError, load_concept_file, parse_concept_text
from .settings import add_arguments, check, config_from_inputs
from .steps import StepInfo
from .trainer import EraseConfig, erase


def _concepts(value: str):
    """A concept file path, or inline text where ';' separates lines."""
    if os.path.isfile(value):
        return load_concept_file(value)
    return parse_concept_text(value.replace(";", "\n"), name="command line")


def _progress(info: StepInfo) -> None:
    if info.phase != "training":
        print(f"\r{info.phase}: {info.step}/{info.total}", end="", file=sys.stderr, flush=True)
        if info.step == info.total:
            print(file=sys.stderr)
        return
    bar = "#" * int(30 * info.step / info.total)
    print(f"\rtraining [{bar:<30}] {info.step}/{info.total} loss {info.loss:.4g} S {info.mean_s:.3g} "
          f"r {info.ratio:.3g} (sigma {info.sigma:.3g})",
          end="\n" if info.step == info.total else "", file=sys.stderr, flush=True)
    if math.isfinite(info.erased):
        print("\n" + info.check_text(), file=sys.stderr, flush=True)


def cmd_erase(args) -> int:
    from .adapters.diffusers_sd import DiffusersDenoiser
    from .report import measure

    if args.x_source == "latents":
        raise ValueError("--x-source latents needs your own latents, which the command line does not take: "
                         "use anchor_samples or trajectory")
    config = config_from_inputs(EraseConfig, vars(args))
    check(config)  # before the pipeline loads: the same message as the node's and the main job's
    concepts = _concepts(args.concepts)
    denoiser, _ = DiffusersDenoiser.from_folder(args.pipeline, device=args.device)
    erasure = erase(denoiser, concepts, config, callback=_progress)
    path = erasure.save(args.out)
    report = measure(denoiser, erasure, concepts, resolution=args.resolution)
    print(report.text())
    meta = erasure.metadata
    if meta.capped:
        print(meta.stopped, file=sys.stderr)
    print(f"erasure written to {path} ({meta.seconds:.1f} s; {meta.stopped}; keep projection: {meta.keep_projection.note})")
    if args.report_json:
        Path(args.report_json).write_text(json.dumps({"pairs": report.pairs, "keep": report.keep}, indent=1))
    return 0


def cmd_generate(args) -> int:
    """Write the before/after grid of ``--prompts`` for ``--erasure`` on ``--pipeline``."""
    from .adapters.diffusers_sd import DiffusersDenoiser, before_after_images
    from .erasure import Erasure
    from .plot import comparison_grid

    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    if not prompts:
        raise ValueError("--prompts has no prompt: give prompts separated by ';', e.g. 'a red circle; a blue square'")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"the grid is written as PNG: give --out a .png name, not {out.name!r}")
    erasure = Erasure.load(args.erasure)
    _, pipe = DiffusersDenoiser.from_folder(args.pipeline, device=args.device)
    pairs = before_after_images(pipe, erasure, prompts, steps=args.steps, seed=args.seed, guidance=args.guidance,
                                resolution=args.resolution, strength=args.strength)
    grid = comparison_grid([(p, list(images)) for p, images in zip(prompts, pairs)],
                           ["before", f"after (strength {args.strength:g})"])
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"before/after grid of {len(prompts)} prompts written to {out}")
    return 0


def cmd_probe(args) -> int:
    """Attack ``--erasure`` on ``--pipeline`` for the targets of ``--concepts``; print the result."""
    import torch

    from .adapters.diffusers_sd import DiffusersDenoiser, check_fits
    from .attacks import probe
    from .erasure import Erasure
    from .plot import comparison_grid

    config = config_from_inputs(AttackConfig, vars(args))
    check(config)
    if args.out and Path(args.out).suffix.lower() != ".png":
        raise ValueError(f"the grid is written as PNG: give --out a .png name, not {Path(args.out).name!r}")
    concepts = _concepts(args.concepts)
    erasure = Erasure.load(args.erasure)
    denoiser, pipe = DiffusersDenoiser.from_folder(args.pipeline, device=args.device)
    check_fits(pipe.unet, erasure)
    result = probe(denoiser, erasure, concepts, config, callback=_progress)
    print(result.text())
    if args.out:
        with torch.no_grad():
            columns = [pipe.image_processor.postprocess(pipe.vae.decode(
                result.latents[k].to(pipe.vae.device, pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample,
                output_type="pil") for k in ("original", "erased", "attacked")]
        per = len(columns[0]) // len(result.prompts)
        rows = [(result.before.pairs[i // per]["target"], [c[i] for c in columns]) for i in range(len(columns[0]))]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        comparison_grid(rows, ["original", "erased", f"erased + {result.attack}"]).save(out)
        print(f"original | erased | attacked images written to {out}")
    if args.report_json:
        Path(args.report_json).write_text(json.dumps({"attack": result.attack, "prompts": result.prompts,
                                                      "before": result.before.pairs, "after": result.after.pairs,
                                                      "restored": result.restored()}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    prog = "python -m unlearn_core" if Path(sys.argv[0]).name == "__main__.py" else Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser("erase", help="erase concepts from a diffusers pipeline folder into an erasure file")
    e.add_argument("--pipeline", required=True, help="diffusers pipeline folder (model_index.json)")
    e.add_argument("--concepts", required=True,
                   help="a concept-set file (.txt/.json/.yaml) or inline lines separated by ';', "
                        "e.g. 'Van Gogh -> a painting; keep: a photo of a dog'")
    e.add_argument("--out", required=True, help="output .safetensors file")
    add_arguments(e, EraseConfig)
    e.add_argument("--device", default="cuda" if _cuda() else "cpu")
    e.add_argument("--report-json", help="also write the prediction-space report as JSON")
    e.set_defaults(run=cmd_erase)

    g = sub.add_parser("generate", help="images before and after an erasure, as a labelled PNG grid")
    g.add_argument("--pipeline", required=True, help="the diffusers pipeline folder the erasure was trained on")
    g.add_argument("--erasure", required=True, help="an erasure .safetensors file written by `erase`")
    g.add_argument("--prompts", required=True, help="prompts separated by ';' (one grid row each)")
    g.add_argument("--out", required=True, help="output .png file")
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--seed", type=int, default=0, help="the same seed for both images of a row")
    g.add_argument("--guidance", type=float, default=7.5)
    g.add_argument("--resolution", type=int, help="image side in pixels (default: the pipeline's own)")
    g.add_argument("--strength", type=float, default=1.0, help="W = W0 + strength * delta")
    g.add_argument("--device", default="cuda" if _cuda() else "cpu")
    g.set_defaults(run=cmd_generate)

    p = sub.add_parser("probe", help="attack an erasure file: can a learnt prompt bring the erased targets back?")
    p.add_argument("--pipeline", required=True, help="the diffusers pipeline folder the erasure was trained on")
    p.add_argument("--erasure", required=True, help="an erasure .safetensors file written by `erase`")
    p.add_argument("--concepts", required=True, help="the erased concept set (file or inline, as for `erase`)")
    add_arguments(p, AttackConfig)
    p.add_argument("--out", help="also write original | erased | attacked images as a .png grid")
    p.add_argument("--report-json", help="also write the result as JSON")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.set_defaults(run=cmd_probe)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConceptSetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
