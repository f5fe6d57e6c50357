"""The demo model as one object: slim UNet, word encoder, narrow autoencoder; and its engine adapter.

``DemoModel.load()`` reads the small shipped parts from ``unlearn_demo/weights``. The same
weights, inflated, form the ComfyUI checkpoint that :mod:`unlearn_demo.assemble` writes; this
object runs them directly (exactly the same function, 12x cheaper) for training and benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from unlearn_core.atomic_write import write_atomically
from unlearn_core.denoiser import Conditioning, Denoiser
from unlearn_core.schedule import ddim_sample, scaled_linear_alphas_cumprod

from .classifier import AttributeClassifier
from .slim_unet import SlimUNet
from .text import WordEncoder
from .tiny_vae import TinyAutoencoder

WEIGHTS = Path(__file__).resolve().parent / "weights"
CLIP_SHAPES_WEIGHTS = WEIGHTS.parent / "weights_clip_shapes"  # the shapes demo with a contextual CLIP (clip_text.py)
LATENT_SIZE = 8  # 64-pixel images


def save_words(words: WordEncoder, folder: Path) -> None:
    """The text encoder as ``words.safetensors`` with what rebuilds it (its token ids, and its layout if contextual)."""
    _save(words, folder / "words.safetensors", {"token_ids": words.token_ids, **getattr(words, "config", {})})


def _save(module: nn.Module, path: Path, meta: dict) -> None:
    """Floating tensors as fp16 (the assembled checkpoint is fp16, so both compute the same), atomically."""
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in module.state_dict().items()}
    write_atomically(path, lambda tmp: save_file(state, tmp, metadata={"config": json.dumps(meta)}))


def _load(path: Path) -> tuple[dict[str, Tensor], dict]:

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}, meta


def load_unet_and_words(folder: Path, parts: tuple[str, ...], train_command: str) -> tuple[SlimUNet, WordEncoder]:
    """The slim UNet and text encoder saved in ``folder`` (word rows, or the contextual encoder where the file says
    so), after checking that every file of ``parts`` is there."""
    missing = [n for n in parts if not (folder / f"{n}.safetensors").is_file()]
    if missing:
        raise FileNotFoundError(f"weights {missing} missing in {folder}: train them with `{train_command}`")
    state, meta = _load(folder / "unet.safetensors")
    unet = SlimUNet(**meta)
    unet.load_state_dict(state)
    state, meta = _load(folder / "words.safetensors")
    if meta.get("encoder") == "contextual":
        from .contextual_text import ContextualEncoder

        words = ContextualEncoder(meta["token_ids"], meta["width"], meta["layers"], meta["heads"])
    elif meta.get("encoder") == "clip_layers":
        from .clip_text import ClipLayersEncoder

        words = ClipLayersEncoder(meta["token_ids"], meta["layers"], meta["mlp"])
    else:
        words = WordEncoder(meta["token_ids"])
    words.load_state_dict(state)
    return unet, words


class DemoModel(nn.Module):
    """Prompt -> latent denoiser -> 64x64 image, in the layout the ComfyUI checkpoint inflates."""

    def __init__(self, unet: SlimUNet, words: WordEncoder, autoencoder: TinyAutoencoder, latent_std: float):
        super().__init__()
        self.unet, self.words, self.autoencoder = unet, words, autoencoder
        self.latent_std = latent_std  # raw TAESD latents / latent_std are what the UNet sees
        self.register_buffer("alphas_cumprod", scaled_linear_alphas_cumprod(), persistent=False)

    # ----------------------------------------------------------------------- files
    def save(self, folder: Path = WEIGHTS) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        _save(self.unet, folder / "unet.safetensors", self.unet.config)
        save_words(self.words, folder)
        _save(self.autoencoder, folder / "autoencoder.safetensors",
              {"width": self.autoencoder.width, "latent_std": self.latent_std})

    @classmethod
    def load(cls, folder: Path = WEIGHTS) -> "DemoModel":
        unet, words = load_unet_and_words(folder, ("unet", "words", "autoencoder"), "python -m unlearn_demo.train")
        state, meta = _load(folder / "autoencoder.safetensors")
        ae = TinyAutoencoder(meta["width"])
        ae.load_state_dict(state)
        return cls(unet, words, ae, meta["latent_std"]).eval()

    # ----------------------------------------------------------------------- use
    def encode(self, images: Tensor) -> Tensor:
        """Images [B, 3, 64, 64] in [0, 1] -> UNet latents [B, 4, 8, 8]."""
        return self.autoencoder.taesd_encoder(images) / self.latent_std

    def decode(self, latents: Tensor) -> Tensor:
        """UNet latents -> images in [0, 1]."""
        return self.autoencoder.taesd_decoder(latents * self.latent_std).clamp(0, 1)

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 4.0,
                 denoiser: Denoiser | None = None) -> Tensor:
        """Images for ``prompts`` (one each, noise from ``seed``) with DDIM and classifier-free guidance."""
        denoiser = denoiser or DemoDenoiser(self)
        gen = torch.Generator().manual_seed(seed)
        cond = denoiser.encode_prompts(prompts, (64, 64))
        uncond = denoiser.encode_prompts([""] * len(prompts), (64, 64))
        latents = ddim_sample(denoiser, cond, uncond, (4, LATENT_SIZE, LATENT_SIZE), steps, guidance, gen).final
        return self.decode(latents.to(self.alphas_cumprod.device)).cpu()


class DemoDenoiser(Denoiser):
    """The engine's view of the demo model (epsilon prediction, SD1.5 schedule, ldm key names)."""

    prediction_type = "epsilon"
    latent_channels = 4
    family = "sd1"
    key_format = "ldm"

    def __init__(self, model: DemoModel):
        super().__init__()
        self.net = model.unet
        self.words = model.words
        self.alphas_cumprod = scaled_linear_alphas_cumprod()

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        return self.net(x_t, timesteps, cond["context"])

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], size: tuple[int, int]) -> Conditioning:
        return {"context": self.words(prompts).to(self.device)}

    def word_embedding(self, word: str) -> Tensor:
        return self.words.word_row(word)

    def encode_with_word(self, prompts: list[str], word: str, vector: Tensor, size: tuple[int, int]) -> Conditioning:
        return {"context": self.words(prompts, (word, vector)).to(self.device)}

    def checkpoint_blocks(self) -> list[str]:
        return ["input_blocks.1", "middle_block", "output_blocks.0", "output_blocks.1"]


def load_classifier(folder: Path = WEIGHTS) -> AttributeClassifier:
    state, meta = _load(folder / "classifier.safetensors")
    clf = AttributeClassifier(meta["width"], meta.get("attributes"), meta.get("channels", 3))
    clf.load_state_dict(state)
    return clf.eval()


def save_classifier(clf: AttributeClassifier, folder: Path = WEIGHTS, **meta) -> None:
    _save(clf, folder / "classifier.safetensors", {"width": clf.features[0].out_channels, **meta})
