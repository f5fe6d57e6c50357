"""A contextual text encoder that is CLIP-L itself, with a few low-rank layers: the demo's ComfyUI-loadable case.

:mod:`unlearn_demo.contextual_text` mixes the prompt in a 64-wide transformer and lifts its rows into the UNet's
context; no SD1 checkpoint can hold that lift. This encoder computes in CLIP-L's own layout, at its full width of
768: token and position embeddings, pre-norm layers with causal self-attention and a quick-GELU MLP, and CLIP's
final layer norm, whose output is the conditioning. Each layer is low-rank: one attention head of 64 dimensions
(CLIP-L has 12) and 256 MLP units (CLIP-L has 3072). Inflated with zeros (the other heads' projections, the other
units' weights) it *is* a CLIP-L layer, and the remaining layers of the 12 are identities (zero output
projections), so ComfyUI's stock SD1 text encoder computes exactly this from the assembled checkpoint
(:func:`ClipLayersEncoder.clip_l_layers`). Every row mixes the words before it; the end and padding rows carry
the whole prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .text import CONTEXT_LENGTH, MLP_WIDTH, WIDTH, WordEncoder

HEAD = 64  # CLIP-L's head width: the one head each layer uses is one of CLIP-L's heads


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x·σ(1.702·x), CLIP's activation."""
    return x * torch.sigmoid(1.702 * x)


class LowRankClipLayer(nn.Module):
    """CLIP-L's text layer with one attention head and ``mlp`` MLP units."""

    def __init__(self, mlp: int = 256):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(WIDTH, HEAD) for _ in range(3))
        self.out_proj = nn.Linear(HEAD, WIDTH)
        self.fc1, self.fc2 = nn.Linear(WIDTH, mlp), nn.Linear(mlp, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm1(x)
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.q_proj, self.k_proj, self.v_proj))  # [B, 1 head, n, 64]
        x = x + self.out_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1))
        return x + self.fc2(quick_gelu(self.fc1(self.layer_norm2(x))))

    def clip_l_weights(self) -> dict[str, torch.Tensor]:
        """This layer as CLIP-L's layer tensors (names under ``encoder.layers.i.``): head 0 and the first MLP units
        are ours, the rest zero."""
        def padded(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
            out = torch.zeros(shape)
            out[tuple(slice(0, n) for n in t.shape)] = t.detach().float().cpu()
            return out

        sd = {}
        for name in ("q_proj", "k_proj", "v_proj"):
            proj = getattr(self, name)
            sd[f"self_attn.{name}.weight"] = padded(proj.weight, (WIDTH, WIDTH))
            sd[f"self_attn.{name}.bias"] = padded(proj.bias, (WIDTH,))
        sd["self_attn.out_proj.weight"] = padded(self.out_proj.weight, (WIDTH, WIDTH))
        sd["self_attn.out_proj.bias"] = self.out_proj.bias.detach().float().cpu()
        sd.update({"mlp.fc1.weight": padded(self.fc1.weight, (MLP_WIDTH, WIDTH)),
                   "mlp.fc1.bias": padded(self.fc1.bias, (MLP_WIDTH,)),
                   "mlp.fc2.weight": padded(self.fc2.weight, (WIDTH, MLP_WIDTH)),
                   "mlp.fc2.bias": self.fc2.bias.detach().float().cpu()})
        for norm in ("layer_norm1", "layer_norm2"):
            sd.update({f"{norm}.{k}": v.detach().float().cpu() for k, v in getattr(self, norm).state_dict().items()})
        return sd


class ClipLayersEncoder(WordEncoder):
    """Conditioning [B, 77, 768] of prompts of known words, as ComfyUI's SD1 CLIP computes it from the checkpoint."""

    def __init__(self, token_ids: dict[str, int], layers: int = 2, mlp: int = 256):
        super().__init__(token_ids)
        self.config = {"encoder": "clip_layers", "layers": layers, "mlp": mlp}
        self.position = nn.Parameter(torch.randn(CONTEXT_LENGTH, WIDTH) * 0.02)
        self.layers = nn.ModuleList(LowRankClipLayer(mlp) for _ in range(layers))
        self.final_norm = nn.LayerNorm(WIDTH)

    def forward(self, prompts: list[str], learnt: tuple[str, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.embed(prompts, learnt) + self.position
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)

    def clip_l_layers(self) -> dict[str, torch.Tensor]:
        """The tensors of CLIP-L this encoder sets besides the token table: positions, its layers (the first ones),
        the final layer norm. ``text.clip_l_state_dict`` fills in the rest as identities."""
        sd = {"embeddings.position_embedding.weight": self.position.detach().float().cpu()}
        for i, layer in enumerate(self.layers):
            sd.update({f"encoder.layers.{i}.{k}": v for k, v in layer.clip_l_weights().items()})
        sd.update({f"final_layer_norm.{k}": v.detach().float().cpu() for k, v in self.final_norm.state_dict().items()})
        return sd
