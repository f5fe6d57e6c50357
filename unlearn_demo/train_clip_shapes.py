"""Train the shapes demo with a contextual CLIP text encoder: the demo domain whose checkpoint ComfyUI loads.

    python -m unlearn_demo.train_clip_shapes [--steps 2000] [--threads 2]

Starts from the shipped shapes model (``unlearn_demo/weights``): its UNet is fine-tuned with a
:class:`~unlearn_demo.clip_text.ClipLayersEncoder` (CLIP-L's layout with two low-rank layers; its token table starts
from the shipped word rows) on latents of fresh shape images made by the shipped autoencoder, which is copied
unchanged, as is the latent scale; the shapes classifier reads the samples. Writes
``unlearn_demo/weights_clip_shapes``; everything is seeded and the runtime is in ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .clip_text import ClipLayersEncoder
from .model import CLIP_SHAPES_WEIGHTS, WEIGHTS, DemoModel, load_classifier
from .shapes import caption
from .train import check_samples, encode_dataset, train_denoiser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=CLIP_SHAPES_WEIGHTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--steps", type=int, default=2000, help="fine-tuning steps of batch 32")
    parser.add_argument("--dataset", type=int, default=12288)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    log = {"args": {k: str(v) for k, v in vars(args).items() if k != "out"}, "torch": torch.__version__,
           "seconds": {}}
    shapes = DemoModel.load(WEIGHTS)
    words = ClipLayersEncoder(shapes.words.token_ids)
    with torch.no_grad():
        words.table.copy_(shapes.words.table)  # the same rows and order: WordEncoder's, from the same token ids

    start = time.time()
    latents, attrs = encode_dataset(shapes.autoencoder, args.dataset, args.device, rng)
    unet, words = train_denoiser(latents / shapes.latent_std, lambda i, r: caption(attrs[i], r), words.token_ids,
                                 args.steps, 32, shapes.unet.config["width"], args.device, rng, log,
                                 peak_lr=args.lr, words=words, unet=shapes.unet.train())
    log["seconds"]["denoiser"] = time.time() - start
    args.out.mkdir(parents=True, exist_ok=True)
    DemoModel(unet.cpu(), words.cpu(), shapes.autoencoder, shapes.latent_std).save(args.out)
    shutil.copyfile(WEIGHTS / "autoencoder.safetensors", args.out / "autoencoder.safetensors")  # byte for byte

    log["samples_recognised"] = check_samples(DemoModel.load(args.out), load_classifier())
    print("samples recognised", log["samples_recognised"], flush=True)
    (args.out / "training.json").write_text(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
