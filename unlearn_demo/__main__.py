"""``python -m unlearn_demo {run,assemble,train,toy-pipeline} ...``: the demo model's and the toy pipeline's commands."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"run": "erase a concept from the demo model in a headless ComfyUI; write grid and report",
                "assemble": "write the demo checkpoint (for your own ComfyUI's models/checkpoints)",
                "train": "retrain the demo model and classifier from scratch",
                "toy-pipeline": "write a toy diffusers SD pipeline with random weights (for divergence-unlearn)"}
    if not argv or argv[0] not in commands:
        usage = ("usage: python -m unlearn_demo {run,assemble,train,toy-pipeline} [options]\n" +
                 "\n".join(f"  {k:<12} {v}" for k, v in commands.items()) +
                 "\n(python -m unlearn_demo COMMAND --help: that command's options)")
        asked = argv[:1] in (["-h"], ["--help"])
        print(usage, file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        from .main_job import main as run
        return run(rest)
    if command == "train":
        from .train import main as train
        return train(rest)
    parser = argparse.ArgumentParser(prog=f"python -m unlearn_demo {command}")
    if command == "toy-pipeline":
        from pathlib import Path

        from .toy import tiny_pipeline

        parser.add_argument("folder")
        parser.add_argument("--seed", type=int, default=0)
        args = parser.parse_args(rest)
        out = Path(args.folder)
        tiny_pipeline(out / ".tokenizer", seed=args.seed).save_pretrained(out)
        print(f"toy pipeline (random weights) written to {out}")
        return 0
    parser.add_argument("--out", default=".", help="a folder (e.g. ComfyUI/models/checkpoints) or a .safetensors path")
    from .assemble import write_checkpoint
    print(write_checkpoint(parser.parse_args(rest).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
