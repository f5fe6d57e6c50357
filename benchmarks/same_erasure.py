"""Does a change of the engine change its erasures? Erase with a fixed set of settings on the demo models at one
checkout, again at another, and compare the files tensor by tensor and field by field.

    python benchmarks/same_erasure.py write out/before           # at the old commit (e.g. a git worktree)
    python benchmarks/same_erasure.py write out/after            # at the new one
    python benchmarks/same_erasure.py compare out/before out/after

Run ``write`` with ``PYTHONPATH`` at the checkout it should measure (this script from any checkout). The cases cover the default stopping rules
(settled, erase_until reached, the steps cap), max_keep_drift's return to an earlier state, a variational
divergence, erase_mode adversarial, a LoRA with gradient accumulation, on the shapes demo and the flow demo.
``compare`` prints one line per file and exits 1 when any tensor or recorded value differs (the run's seconds,
the pack's version and the header's format left out).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from unlearn_core.concepts import parse_concept_text
from unlearn_core.erasure import Erasure
from unlearn_core.trainer import EraseConfig, erase
from unlearn_demo.domains import DOMAINS

CONCEPTS = ("a red circle -> a red shape\na blue circle -> a blue shape\nkeep: a blue square\n"
            "keep: a green triangle")
BASE = EraseConfig(resolution=64, num_samples=4, sample_steps=4, batch_size=2)
CASES = {
    "default": replace(BASE, steps=60),
    "keep_drift": replace(BASE, steps=30, max_keep_drift=0.01, check_every=5, sigma=0, keep_projection=False),
    "variational": replace(BASE, steps=12, divergence="variational_kl", erase_until=0, critic_warmup=3,
                           keep_projection=False),
    "adversarial": replace(BASE, steps=12, erase_mode="adversarial", parameter_set="non_cross_attn", check_every=4),
    "lora_cap": replace(BASE, steps=10, lora_rank=4, grad_accumulation=2, log_every=3),
}
DOMAIN_CASES = {"shapes": list(CASES), "flow": ["default", "lora_cap"]}
UNCOMPARED = ("seconds", "version")


def write(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    concepts = parse_concept_text(CONCEPTS)
    for name, cases in DOMAIN_CASES.items():
        domain = DOMAINS[name]
        denoiser = domain.make_denoiser(domain.load_model())
        for case in cases:
            erasure = erase(denoiser, concepts, CASES[case])
            print(erasure.save(folder / f"{name}_{case}.safetensors"), flush=True)  # any version's Erasure saves


def differences(before: Erasure, after: Erasure) -> list[str]:
    """What differs between two erasures: tensor names, tensors, and recorded values."""
    if before.names != after.names:
        return ["the trained tensors"]
    found = [f"tensor {n}" for n in before.names if not torch.equal(before.delta(n), after.delta(n))]
    old, new = asdict(before.metadata), asdict(after.metadata)
    for record in (old, new):  # format 1 recorded the projection as its note only
        record["keep_projection"] = {k: record["keep_projection"][k] for k in ("status", "note")}
    found += [f"metadata {key}" for key in old if key not in UNCOMPARED and old[key] != new[key]]
    return found


def compare(before: Path, after: Path) -> int:
    failed = False
    for path in sorted(before.glob("*.safetensors")):
        found = differences(Erasure.load(path), Erasure.load(after / path.name))
        print(f"{path.name}: " + (f"DIFFERS in {', '.join(found[:4])}" if found else "the same, bit for bit"))
        failed |= bool(found)
    return int(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("write", help="erase every case into FOLDER").add_argument("folder", type=Path)
    compared = commands.add_parser("compare", help="compare the files of two folders")
    compared.add_argument("before", type=Path)
    compared.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.command == "write":
        write(args.folder)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
