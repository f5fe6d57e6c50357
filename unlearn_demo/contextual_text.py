"""A contextual text encoder for the demo domains: a small causal transformer, as CLIP is.

The demo's :class:`~unlearn_demo.text.WordEncoder` gives every word one row, independent of the other
words: the easy case for an erasure (only the target's own word rows differ from the keep prompts').
Real text encoders (CLIP-L, OpenCLIP-G, T5) mix the prompt: every output row depends on the words
before it, and the end-of-text and padding rows carry the whole prompt. This encoder does that, in
CLIP's layout and at a small width:

    rows = final_layer_norm(causal transformer(token_embedding[ids] + position_embedding)) @ W_out

with start/end tokens and end-token padding to 77 rows, as ComfyUI's SD1 CLIP tokenises. The
transformer is ``width`` wide (64); ``W_out`` lifts its rows into the UNet's 768-wide context, so
the rows span at most ``width`` of the 768 directions, as real CLIP rows concentrate in few directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .text import CONTEXT_LENGTH, WIDTH, WordEncoder


class CausalLayer(nn.Module):
    """A pre-norm transformer layer with causal self-attention (CLIP's text layer)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ContextualEncoder(WordEncoder):
    """Conditioning [B, 77, 768] of prompts of known words, each row mixing the words before it."""

    def __init__(self, token_ids: dict[str, int], width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__(token_ids)
        self.config = {"encoder": "contextual", "width": width, "layers": layers, "heads": heads}
        self.table = nn.Parameter(torch.randn(len(self.rows), width) * 0.5)
        self.position = nn.Parameter(torch.randn(CONTEXT_LENGTH, width) * 0.02)
        self.layers = nn.ModuleList(CausalLayer(width, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width)
        self.lift = nn.Linear(width, WIDTH, bias=False)

    def forward(self, prompts: list[str], learnt: tuple[str, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.embed(prompts, learnt) + self.position
        for layer in self.layers:
            x = layer(x)
        return self.lift(self.final_norm(x))
