"""A small rectified-flow transformer in Flux's layout, trained on the demo's shapes: a real flow model to erase from.

Flux's structure at toy size, written here in plain torch (no code from any host): the demo's 4×8×8
latents are cut into 2×2 patches (16 image tokens, ``img_in``); the demo's word rows (frozen) are the
text tokens (``txt_in``); a vector ``vec`` = ``time_in`` (sinusoidal embedding of s) + ``vector_in``
(the pooled text vector) drives adaLN modulation; ``double_blocks`` keep separate image and text weights
(``img_mod``/``txt_mod``, ``img_attn.qkv``/``txt_attn.qkv``, ``img_attn.proj``/``txt_attn.proj``,
``img_mlp``/``txt_mlp``) around one joint attention over both token sets; ``single_blocks`` run one
stream (``linear1`` fused qkv + MLP in, ``linear2`` out, ``modulation``); ``final_layer`` maps back to
patches. A learned position embedding (``pe_embedder``) replaces Flux's RoPE. The tensor names are Flux's, so the
engine's ``architectures.architecture_of`` reads "flux" and its parameter sets select the text stream.

The network predicts the velocity u = eps - x0 at x_s = (1 - s) x0 + s eps (rectified flow); its
schedule is ComfyUI's ModelSamplingFlux grid s_k = (k + 1)/T without shift, which the engine sees as the
DDPM schedule with the same signal-to-noise ratio. Shipped in ``unlearn_demo/weights_flow``
(``python -m unlearn_demo.train_flow``). Not a ComfyUI checkpoint (ComfyUI's Flux detection fixes the
width at 3072): the demo's ComfyUI node ``unlearn_demo.host_nodes`` builds ComfyUI's own Flux model around it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn_core.denoiser import Conditioning, Denoiser
from unlearn_core.schedule import abar_from_flow_sigma, ddim_sample, flow_coordinates
from .model import WEIGHTS, DemoModel, _load, _save

FLOW_WEIGHTS = Path(__file__).resolve().parent / "weights_flow"
CONTEXT_TOKENS = 10  # start, up to 7 words ("a red circle on a white background"), end, padding
TEXT_WIDTH = 768  # the demo's word rows
PATCH = 2


def flow_sigmas(steps: int = 1000, shift: float = 1.0) -> Tensor:
    """s_k = shift·t / (1 + (shift - 1)·t) at t = (k + 1)/T: ComfyUI's ModelSamplingFlux grid (s_T-1 = 1)."""
    t = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    return (shift * t / (1 + (shift - 1) * t)).float()


def timestep_embedding(s: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of 1000·s (Flux's time_factor), [B] -> [B, dim]."""
    freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, device=s.device) / (dim // 2))
    args = 1000.0 * s.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    def __init__(self, d_in: int, hidden: int):
        super().__init__()
        self.in_layer, self.out_layer = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class Modulation(nn.Module):
    """vec -> ``chunks`` (shift, scale, gate) triples' worth of [B, 1, hidden] vectors."""

    def __init__(self, hidden: int, chunks: int):
        super().__init__()
        self.chunks, self.lin = chunks, nn.Linear(hidden, chunks * hidden)

    def forward(self, vec: Tensor) -> list[Tensor]:
        return self.lin(F.silu(vec))[:, None].chunk(self.chunks, dim=-1)


def modulate(norm: nn.LayerNorm, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return (1 + scale) * norm(x) + shift


def attention(qkv: Tensor, heads: int) -> Tensor:
    """Self-attention over every token of qkv [B, L, 3·hidden] -> [B, L, hidden]."""
    b, length, _ = qkv.shape
    q, k, v = qkv.view(b, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, -1)


class SelfAttention(nn.Module):  # Flux's names: the qkv and proj of one stream
    def __init__(self, hidden: int):
        super().__init__()
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)


def _mlp(hidden: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, ratio * hidden), nn.GELU(approximate="tanh"), nn.Linear(ratio * hidden, hidden))


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        for side in ("img", "txt"):
            setattr(self, f"{side}_mod", Modulation(hidden, 6))
            setattr(self, f"{side}_norm1", nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{side}_attn", SelfAttention(hidden))
            setattr(self, f"{side}_norm2", nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{side}_mlp", _mlp(hidden, mlp_ratio))

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor) -> tuple[Tensor, Tensor]:
        out, mods = [], {}
        for side, x in (("txt", txt), ("img", img)):  # Flux's order: text tokens first
            mods[side] = getattr(self, f"{side}_mod")(vec)
            shift, scale = mods[side][:2]
            out.append(getattr(self, f"{side}_attn").qkv(modulate(getattr(self, f"{side}_norm1"), x, shift, scale)))
        joint = attention(torch.cat(out, dim=1), self.heads)
        results = []
        for side, x, a in (("txt", txt, joint[:, :txt.shape[1]]), ("img", img, joint[:, txt.shape[1]:])):
            _, _, gate1, shift2, scale2, gate2 = mods[side]
            x = x + gate1 * getattr(self, f"{side}_attn").proj(a)
            h = modulate(getattr(self, f"{side}_norm2"), x, shift2, scale2)
            results.append(x + gate2 * getattr(self, f"{side}_mlp")(h))
        txt, img = results
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads, self.split = heads, [3 * hidden, mlp_ratio * hidden]
        self.linear1 = nn.Linear(hidden, 3 * hidden + mlp_ratio * hidden)
        self.linear2 = nn.Linear(hidden + mlp_ratio * hidden, hidden)
        self.pre_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.modulation = Modulation(hidden, 3)

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = self.linear1(modulate(self.pre_norm, x, shift, scale)).split(self.split, -1)
        return x + gate * self.linear2(torch.cat([attention(qkv, self.heads), F.gelu(mlp, approximate="tanh")], -1))


class LastLayer(nn.Module):
    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final, x, shift, scale))


class FlowTransformer(nn.Module):
    """u(x_s, s, context, y): latents [B, C, H, W], s [B] in [0, 1], context [B, L, 768], y [B, 768]."""

    def __init__(self, hidden: int = 128, heads: int = 4, depth: int = 4, depth_single: int = 2, mlp_ratio: int = 4,
                 latent_channels: int = 4, latent_size: int = 8):
        super().__init__()
        self.config = dict(hidden=hidden, heads=heads, depth=depth, depth_single=depth_single, mlp_ratio=mlp_ratio,
                           latent_channels=latent_channels, latent_size=latent_size)
        patch_dim = latent_channels * PATCH * PATCH
        self.img_in = nn.Linear(patch_dim, hidden)
        self.pe_embedder = nn.Embedding((latent_size // PATCH) ** 2, hidden)  # learned, where Flux has RoPE
        nn.init.normal_(self.pe_embedder.weight, std=0.02)
        self.time_in = MLPEmbedder(256, hidden)
        self.vector_in = MLPEmbedder(TEXT_WIDTH, hidden)
        self.txt_in = nn.Linear(TEXT_WIDTH, hidden)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden, heads, mlp_ratio) for _ in range(depth_single))
        self.final_layer = LastLayer(hidden, patch_dim)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: Tensor, s: Tensor, context: Tensor, y: Tensor) -> Tensor:
        b, c, h, w = x.shape
        patches = F.pixel_unshuffle(x, PATCH).flatten(2).transpose(1, 2)  # [B, hw/4, 4C]
        img = self.img_in(patches) + self.pe_embedder.weight
        vec = self.time_in(timestep_embedding(s).to(x.dtype)) + self.vector_in(y)
        txt = self.txt_in(context)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec)
        joint = torch.cat([txt, img], dim=1)
        for block in self.single_blocks:
            joint = block(joint, vec)
        out = self.final_layer(joint[:, txt.shape[1]:], vec)
        return F.pixel_shuffle(out.transpose(1, 2).reshape(b, -1, h // PATCH, w // PATCH), PATCH)


class HostFlowTransformer(FlowTransformer):
    """The flow transformer called the way ComfyUI's Flux model base calls its network (``host_nodes`` builds it).

    ComfyUI hands over the latents in flow coordinates, s itself as the timestep (ModelSamplingFlux) and its CLIP's
    77 rows as context; the network reads the first CONTEXT_TOKENS rows, as :meth:`FlowDemoModel.text` gives them,
    and pools y from them the same way. The host's own arguments (operations, guidance, ...) are not used.
    """

    patch_size = PATCH  # read by ComfyUI's Flux.concat_cond

    def __init__(self, in_channels: int = 4, out_channels: int = 4, device=None, dtype=None, operations=None,
                 **config):
        super().__init__(**config)
        self.dtype = dtype or torch.float32  # ComfyUI's networks state the dtype they compute in
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, y: Tensor | None = None, **host_args) -> Tensor:
        context = context[:, :CONTEXT_TOKENS]
        return super().forward(x, timestep, context, context[:, -1])


def transformer_weights(folder: Path = FLOW_WEIGHTS) -> tuple[dict[str, Tensor], dict]:
    """(state dict, constructor config) of the trained transformer in ``folder``."""
    path = folder / "transformer.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: train it with `python -m unlearn_demo.train_flow`")
    return _load(path)


def load_transformer(folder: Path = FLOW_WEIGHTS) -> FlowTransformer:
    """The trained transformer in ``folder``."""
    state, config = transformer_weights(folder)
    transformer = FlowTransformer(**config)
    transformer.load_state_dict(state)
    return transformer.eval()


class FlowDemoModel(nn.Module):
    """Prompt -> flow transformer -> 64x64 image; the demo's word rows and autoencoder, frozen, around it."""

    def __init__(self, transformer: FlowTransformer, demo: DemoModel):
        super().__init__()
        self.transformer, self.words, self.autoencoder = transformer, demo.words, demo.autoencoder
        self.latent_std = demo.latent_std
        self.demo = demo  # encode/decode, as the demo does them
        self.words.requires_grad_(False)
        self.autoencoder.requires_grad_(False)

    def save(self, folder: Path = FLOW_WEIGHTS) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        _save(self.transformer, folder / "transformer.safetensors", self.transformer.config)

    @classmethod
    def load(cls, folder: Path = FLOW_WEIGHTS, demo_folder: Path = WEIGHTS) -> "FlowDemoModel":
        return cls(load_transformer(folder), DemoModel.load(demo_folder)).eval()

    def text(self, prompts: list[str], learnt: tuple[str, Tensor] | None = None) -> Conditioning:
        """The text tokens [B, CONTEXT_TOKENS, 768] and the pooled vector y [B, 768]: the end token's state, as
        CLIP pools. The demo's text encoder has identity layers, so y is the same for every prompt and the
        prompt reaches the image only through the text stream, as in Flux where T5's tokens carry it. (A
        first version pooled the mean of the rows: the network read the shape from y alone, out of reach
        of the text-stream parameter sets, and erasure there changed nothing.)"""
        context = self.words(prompts, learnt)[:, :CONTEXT_TOKENS]
        return {"context": context, "y": context[:, -1]}

    def encode(self, images: Tensor) -> Tensor:
        return self.demo.encode(images)

    def decode(self, latents: Tensor) -> Tensor:
        return self.demo.decode(latents)

    @torch.no_grad()
    def sample_latents(self, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 5.0,
                       denoiser: Denoiser | None = None) -> Tensor:
        """Latents for ``prompts`` (noise from ``seed``): the engine's DDIM, i.e. Euler on the flow's ODE."""
        denoiser = denoiser or FlowDemoDenoiser(self)
        cond = denoiser.encode_prompts(prompts, (64, 64))
        uncond = denoiser.encode_prompts([""] * len(prompts), (64, 64))
        return ddim_sample(denoiser, cond, uncond, (4, 8, 8), steps, guidance, torch.Generator().manual_seed(seed)).final

    def generate(self, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 5.0,
                 denoiser: Denoiser | None = None) -> Tensor:
        """Images [B, 3, 64, 64] in [0, 1] for ``prompts`` (one each, noise from ``seed``)."""
        return self.decode(self.sample_latents(prompts, seed, steps, guidance, denoiser)).cpu()


class FlowDemoDenoiser(Denoiser):
    """The engine's view of the flow model: velocity prediction, Flux's tensor names, the flow schedule as abar."""

    prediction_type = "flow"
    architecture = "flux"
    latent_channels = 4
    family = "flux-demo"
    key_format = "ldm"

    def __init__(self, model: FlowDemoModel, shift: float = 1.0):
        super().__init__()
        self.net = model.transformer
        self.model_text = model.text
        self.model_words = model.words
        self.sigmas = flow_sigmas(shift=shift)
        self.alphas_cumprod = abar_from_flow_sigma(self.sigmas)

    def forward(self, x_t: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        abar = self.alphas_cumprod.to(x_t.device)[timesteps]
        scale = flow_coordinates(abar)[1].view(-1, 1, 1, 1).to(x_t.dtype)  # x_flow = scale * x_t
        return self.net(x_t * scale, self.sigmas.to(x_t.device)[timesteps], cond["context"], cond["y"])

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], size: tuple[int, int]) -> Conditioning:
        return {k: v.to(self.device) for k, v in self.model_text(prompts).items()}

    def word_embedding(self, word: str) -> Tensor:
        return self.model_words.word_row(word)

    def encode_with_word(self, prompts: list[str], word: str, vector: Tensor, size: tuple[int, int]) -> Conditioning:
        return {k: v.to(self.device) for k, v in self.model_text(prompts, (word, vector)).items()}
