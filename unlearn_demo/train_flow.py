"""Train the flow demo model (a small Flux-layout transformer) on the demo's shapes; write its weights.

    python -m unlearn_demo.train_flow [--out unlearn_demo/weights_flow] [--steps N] [--threads 1]

The demo's autoencoder and word rows are reused, frozen (``unlearn_demo/weights``); only the
transformer is trained, with the rectified-flow loss ||u(x_s, s, c) - (eps - x0)||² at
x_s = (1 - s) x0 + s eps, s logit-normal (SD3's), on latents of a fixed set of procedural images.
Captions as the demo's (2/22 of them empty), plus 10 % dropped to the empty prompt for guidance;
EMA weights. Then the demo's classifier reads samples (the engine's DDIM = Euler, 20 steps) and
``training.json`` records the times, the loss and how often samples show the prompted shape and colour.
``--time-only N`` measures N steps and exits; ``--init FOLDER`` continues a trained transformer.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .flow_model import FLOW_WEIGHTS, FlowDemoModel, FlowTransformer
from .model import DemoModel, load_classifier
from .shapes import caption
from .train import _lr, _set_lr, check_samples, encode_dataset


def train_flow(model: FlowDemoModel, latents: torch.Tensor, captions, steps: int, batch_size: int,
               peak_lr: float, rng: np.random.Generator, log: dict, dropout: float = 0.1) -> FlowTransformer:
    """The transformer's EMA after ``steps`` of the flow-matching loss; ``captions(i, rng)`` captions latent i."""
    net = model.transformer.train()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), peak_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    losses = []
    for step in range(steps):
        _set_lr(opt, _lr(step, steps, peak_lr))
        idx = rng.integers(len(latents), size=batch_size)
        x0 = latents[torch.from_numpy(idx)]
        prompts = ["" if rng.random() < dropout else captions(i, rng) for i in idx.tolist()]
        s = torch.sigmoid(torch.randn(batch_size, generator=gen)).view(-1, 1, 1, 1)  # logit-normal(0, 1)
        eps = torch.randn(x0.shape, generator=gen)
        with torch.no_grad():
            text = model.text(prompts)
        u = net((1 - s) * x0 + s * eps, s.flatten(), text["context"], text["y"])
        loss = F.mse_loss(u, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"flow {step}/{steps} loss {np.mean(losses[-100:]):.4f}", flush=True)
    log["final_loss_mean_last_100"] = float(np.mean(losses[-100:]))
    return ema.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=FLOW_WEIGHTS)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--dataset", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--depth-single", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from the transformer in this folder (its training.json is kept as 'init')")
    parser.add_argument("--time-only", type=int, default=0, help="time this many steps and exit")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    log = {"args": {k: str(v) for k, v in vars(args).items() if k not in ("out", "init")}, "torch": torch.__version__,
           "seconds": {}}
    demo = DemoModel.load()
    model = FlowDemoModel(FlowTransformer(args.hidden, depth=args.depth, depth_single=args.depth_single), demo)
    if args.init:
        model.transformer = FlowDemoModel.load(args.init).transformer
        log["init"] = json.loads((args.init / "training.json").read_text())
    log["parameters"] = sum(p.numel() for p in model.transformer.parameters())

    start = time.time()
    latents, attrs = encode_dataset(demo.autoencoder, args.dataset if not args.time_only else 256, "cpu", rng)
    latents = latents / demo.latent_std
    log["seconds"]["dataset"] = time.time() - start
    captions = lambda i, r: caption(attrs[i], r)  # noqa: E731
    if args.time_only:
        start = time.time()
        train_flow(model, latents, captions, args.time_only, args.batch, args.lr, rng, {})
        print(f"{args.time_only} steps: {time.time() - start:.1f} s ({log['parameters']} parameters)")
        return 0

    start = time.time()
    model.transformer = train_flow(model, latents, captions, args.steps, args.batch, args.lr, rng, log)
    log["seconds"]["transformer"] = time.time() - start
    model.save(args.out)

    start = time.time()
    log["samples_recognised"] = check_samples(FlowDemoModel.load(args.out), load_classifier())
    log["seconds"]["check"] = time.time() - start
    print("samples recognised", log["samples_recognised"], flush=True)
    (args.out / "training.json").write_text(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
