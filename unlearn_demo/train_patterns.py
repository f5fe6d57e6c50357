"""Train the pattern model and its classifier (the second demo domain); write the small shipped parts.

    python -m unlearn_demo.train_patterns [--out unlearn_demo/weights_patterns] [--threads 1]
    python -m unlearn_demo.train_patterns --text contextual [--threads 2]   # the contextual domain


Stages, with the demo's training functions: (1) the slim UNet and the word rows on a fixed set of
pattern images folded to 9×8×8 (v objective, cosine schedule, 2/17 empty prompts for guidance,
EMA weights), (2) the attribute classifier (pattern, scale) on fresh images, (3) a check that samples
show what their prompts say. Everything is seeded; the runtime is in ``training.json``.

``--text contextual`` trains the same UNet with a small causal transformer as its text encoder
(:mod:`unlearn_demo.contextual_text`) into ``unlearn_demo/weights_contextual``; the images are the same, so
it is read by the pattern model's classifier (stage 2 is skipped).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .classifier import AttributeClassifier
from .model import save_classifier
from .contextual_text import ContextualEncoder
from .model import load_classifier
from .pattern_model import (CONTEXT_TOKENS, CONTEXTUAL_WEIGHTS, PATTERN_WEIGHTS, PatternDenoiser, PatternModel,
                            cosine_alphas_cumprod)
from .patterns import ATTRIBUTES, PATTERNS, SCALES, Attributes, batch, caption, vocabulary
from .train import clip_token_ids, default_tokenizer_dir, train_classifier, train_denoiser


def dataset(size: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[Attributes]]:
    """``size`` pattern images as latents [size, 16, 8, 8] and their attributes."""
    images, labels, _ = batch(size, rng)
    return PatternModel.encode(images), [Attributes(PATTERNS[p], SCALES[s]) for p, s in labels.tolist()]


@torch.no_grad()
def check_samples(model: PatternModel, clf: AttributeClassifier, seeds: int = 4) -> dict:
    """How often samples of '{scale} {pattern}' and '{pattern}' show the pattern and scale the prompt names."""
    full = [(s, p) for p in PATTERNS for s in SCALES]
    result = {"pattern": [], "scale": [], "pattern_only_prompt": []}
    for seed in range(seeds):
        pred = clf.predict(model.generate([f"{s} {p}" for s, p in full], seed=seed))
        result["pattern"] += [got == p for got, (_, p) in zip(pred["pattern"], full)]
        result["scale"] += [got == s for got, (s, _) in zip(pred["scale"], full)]
        pred = clf.predict(model.generate(list(PATTERNS), seed=100 + seed))
        result["pattern_only_prompt"] += [got == p for got, p in zip(pred["pattern"], PATTERNS)]
    return {k: float(np.mean(v)) for k, v in result.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", choices=("words", "contextual"), default="words",
                        help="the text encoder: word rows (the pattern domain) or a causal transformer (the contextual "
                             "domain) (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: unlearn_demo/weights_patterns, or weights_contextual with --text contextual")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--denoiser-steps", type=int, default=1200)
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--dataset", type=int, default=4096)
    parser.add_argument("--width", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3, help="the denoiser's peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    contextual = args.text == "contextual"
    args.out = args.out or (CONTEXTUAL_WEIGHTS if contextual else PATTERN_WEIGHTS)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args_log = {k: str(v) for k, v in vars(args).items() if k not in ("out", "tokenizer")}
    log = {"args": args_log, "torch": torch.__version__, "seconds": {}}
    token_ids = clip_token_ids(args.tokenizer or default_tokenizer_dir(), vocabulary())

    start = time.time()
    latents, attrs = dataset(args.dataset, rng)
    unet, words = train_denoiser(latents, lambda i, r: caption(attrs[i], r), token_ids, args.denoiser_steps, 32,
                                 args.width, args.device, rng, log, alphas_cumprod=cosine_alphas_cumprod(),
                                 prediction_type=PatternDenoiser.prediction_type, peak_lr=args.lr,
                                 context_tokens=CONTEXT_TOKENS,
                                 words=ContextualEncoder(token_ids) if contextual else None)
    log["seconds"]["denoiser"] = time.time() - start
    PatternModel(unet.cpu(), words.cpu()).save(args.out)

    if contextual:
        clf = load_classifier(PATTERN_WEIGHTS)
    else:
        start = time.time()
        clf = train_classifier(args.classifier_steps, args.device, rng, log, draw=batch, attributes=ATTRIBUTES,
                               channels=1, blur=False).cpu()
        log["seconds"]["classifier"] = time.time() - start
        save_classifier(clf, args.out, attributes=ATTRIBUTES, channels=1,
                        heldout_accuracy=log["classifier_heldout_accuracy"])

    log["samples_recognised"] = check_samples(PatternModel.load(args.out), clf)
    print("samples recognised", log["samples_recognised"], flush=True)
    (args.out / "training.json").write_text(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
