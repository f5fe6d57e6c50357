"""``python -m unlearn_core.demo {run,assemble,train} ...``: the demo model's commands."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"run": "erase a concept from the demo model in a headless ComfyUI; write grid and report",
                "assemble": "write the demo checkpoint (for your own ComfyUI's models/checkpoints)",
                "train": "retrain the demo model and classifier from scratch"}
    if not argv or argv[0] not in commands:
        usage = ("usage: python -m unlearn_core.demo {run,assemble,train} [options]\n" +
                 "\n".join(f"  {k:<9} {v}" for k, v in commands.items()) +
                 "\n(python -m unlearn_core.demo COMMAND --help: that command's options)")
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
    parser = argparse.ArgumentParser(prog="python -m unlearn_core.demo assemble")
    parser.add_argument("--out", default=".", help="a folder (e.g. ComfyUI/models/checkpoints) or a .safetensors path")
    from .assemble import write_checkpoint
    print(write_checkpoint(parser.parse_args(rest).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
