"""diffusers Stable Diffusion (SD1.x, SD2.x, SDXL) as a :class:`Denoiser`."""

from __future__ import annotations

import os

import torch
from PIL import Image
from torch import Tensor, nn

from ..denoiser import Conditioning, Denoiser
from ..erasure import Erasure
from ..injection import DeltaInjection


def _dtype_keyword() -> str:
    """from_pretrained's dtype argument: ``dtype`` since diffusers 0.40 (``torch_dtype`` warns there), else ``torch_dtype``."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"


def family_of_unet(unet: nn.Module) -> str:
    """sd1 / sd2 / sdxl from the UNet config (cross-attention width and added conditioning)."""
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return {768: "sd1", 1024: "sd2"}.get(cfg.cross_attention_dim, f"sd-like (context {cfg.cross_attention_dim})")


class DiffusersDenoiser(Denoiser):
    """A diffusers ``UNet2DConditionModel`` with its text encoder(s), tokenizer(s) and scheduler."""

    key_format = "diffusers"

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer, scheduler,
                 text_encoder_2: nn.Module | None = None, tokenizer_2=None):
        super().__init__()
        self.net = unet
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.float().cpu()
        self.latent_channels = unet.config.in_channels
        self.family = family_of_unet(unet)
        for module in (unet, text_encoder, text_encoder_2):
            if module is not None:
                module.requires_grad_(False)

    @classmethod
    def from_pipeline(cls, pipe) -> "DiffusersDenoiser":
        return cls(pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler,
                   getattr(pipe, "text_encoder_2", None), getattr(pipe, "tokenizer_2", None))

    @classmethod
    def from_folder(cls, path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32):
        """Load a diffusers pipeline folder; return (denoiser, pipeline)."""
        from diffusers import DiffusionPipeline

        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise FileNotFoundError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        pipe = DiffusionPipeline.from_pretrained(path, safety_checker=None, **{_dtype_keyword(): dtype})
        pipe.to(device)
        return cls.from_pipeline(pipe), pipe

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]} if "text_embeds" in cond else None
        return self.net(x_t, timesteps, encoder_hidden_states=cond["context"], added_cond_kwargs=added).sample

    def checkpoint_blocks(self) -> list[str]:
        names = [f"down_blocks.{i}" for i in range(len(self.net.down_blocks))]
        names += ["mid_block"] if self.net.mid_block is not None else []
        return names + [f"up_blocks.{i}" for i in range(len(self.net.up_blocks))]

    def _hidden(self, encoder: nn.Module, tokenizer, prompts: list[str], penultimate: bool):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(self.device)
        out = encoder(ids, output_hidden_states=True)
        return (out.hidden_states[-2] if penultimate else out[0]), out

    def word_embedding(self, word: str) -> Tensor:
        """The mean of ``word``'s token rows in the (single) text encoder's input embedding."""
        self._single_encoder()
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"{word!r} has no tokens to start textual inversion from: set init_word")
        return self.text_encoder.get_input_embeddings().weight[ids].detach().float().mean(0)

    def encode_with_word(self, prompts: list[str], word: str, vector: Tensor, size: tuple[int, int]) -> Conditioning:
        """Each prompt tokenised around ``word`` (one slot), whose input embedding a hook on the text encoder's
        token embedding sets to ``vector``."""
        self._single_encoder()
        tok, length = self.tokenizer, self.tokenizer.model_max_length
        rows, slots = [], []
        for prompt in prompts:
            before, found, after = prompt.partition(word)
            if not found:
                raise ValueError(f"{prompt!r} does not contain {word!r}")
            pieces = [tok(text, add_special_tokens=False).input_ids if text.strip() else [] for text in (before, after)]
            ids = [tok.bos_token_id, *pieces[0], 0, *pieces[1]][: length - 1] + [tok.eos_token_id]
            slots.append(1 + len(pieces[0]))
            rows.append(ids + [tok.pad_token_id] * (length - len(ids)))
        ids = torch.tensor(rows, device=self.device)
        slot = torch.zeros(ids.shape, dtype=torch.bool, device=self.device)
        slot[torch.arange(len(rows)), torch.tensor(slots).clamp_max(length - 2)] = True

        def learnt_row(module, inputs, output):
            return torch.where(slot[..., None], vector.to(output), output)

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(learnt_row)
        try:
            return {"context": self.text_encoder(ids)[0].to(self.dtype)}
        finally:
            handle.remove()

    def _single_encoder(self) -> None:
        if self.text_encoder_2 is not None:
            raise NotImplementedError("textual inversion through two text encoders (SDXL) is not implemented")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], size: tuple[int, int]) -> Conditioning:
        if self.text_encoder_2 is None:
            context, _ = self._hidden(self.text_encoder, self.tokenizer, prompts, penultimate=False)
            return {"context": context.to(self.dtype)}
        h1, _ = self._hidden(self.text_encoder, self.tokenizer, prompts, penultimate=True)
        h2, out2 = self._hidden(self.text_encoder_2, self.tokenizer_2, prompts, penultimate=True)
        height, width = size
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * len(prompts), device=self.device)
        return {"context": torch.cat([h1, h2], dim=-1).to(self.dtype),
                "text_embeds": out2.text_embeds.to(self.dtype), "time_ids": time_ids.to(self.dtype)}


def check_fits(unet: nn.Module, erasure: Erasure) -> None:
    """Raise unless ``erasure`` names ``unet``'s tensors (diffusers names, same shapes, same family)."""
    erasure.check_against({n: tuple(p.shape) for n, p in unet.named_parameters()}, family_of_unet(unet),
                          key_format="diffusers")


def before_after_images(pipe, erasure: Erasure, prompts: list[str], steps: int = 30, seed: int = 0,
                        guidance: float = 7.5, resolution: int | None = None,
                        strength: float = 1.0) -> list[tuple[Image.Image, Image.Image]]:
    """(image without, image with the erasure) per prompt, both from ``seed``; ``pipe`` is left as it was.

    The erasure is checked against ``pipe.unet`` first (names, shapes, diffusers key format).
    """
    unet = pipe.unet
    check_fits(unet, erasure)

    def images() -> list[Image.Image]:
        return [pipe(prompt, height=resolution, width=resolution, num_inference_steps=steps, guidance_scale=guidance,
                     generator=torch.Generator().manual_seed(seed)).images[0] for prompt in prompts]

    before = images()
    with DeltaInjection(unet, erasure.names, lambda name: strength * erasure.delta(name)):
        after = images()
    return list(zip(before, after))
