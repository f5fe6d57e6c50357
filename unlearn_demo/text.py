"""The demo's text encoder: CLIP-L whose transformer layers are identities, driven by learned word rows.

With every attention output projection and MLP output weight at zero, each CLIP-L layer passes its
input through, so ComfyUI's stock SD1 text encoder returns ``final_layer_norm(token_embedding[id] +
position_embedding)`` per token. We keep position embeddings at zero and learn one 768-d row per word
of the demo vocabulary (plus CLIP's start and end tokens): a prompt's conditioning is then the layer
norm of its words' rows, in any order. Words outside the vocabulary give zero rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONTEXT_LENGTH = 77
WIDTH = 768
VOCAB_SIZE = 49408
START, END = 49406, 49407  # CLIP's <|startoftext|> and <|endoftext|> (also the padding token for SD1)
LEARNT = -1  # the id of a word whose row is given (textual inversion), not looked up
LAYERS, MLP_WIDTH = 12, 3072
PREFIX = "cond_stage_model.transformer.text_model."


class WordEncoder(nn.Module):
    """Conditioning [B, 77, 768] for prompts of known words, as ComfyUI's SD1 CLIP computes it."""

    def __init__(self, token_ids: dict[str, int]):
        super().__init__()
        self.token_ids = dict(token_ids)
        self.rows = {tid: i for i, tid in enumerate([START, END, *self.token_ids.values()])}
        self.table = nn.Parameter(torch.randn(len(self.rows), WIDTH) * 0.5)

    def ids(self, prompt: str, learnt_word: str | None = None) -> list[int]:
        """CLIP token ids: start, one id per word (lower case, split on spaces and commas), end, padding;
        ``learnt_word`` (textual inversion's new word) gets the id LEARNT."""
        words = prompt.lower().replace(",", " ").split()
        unknown = [w for w in words if w not in self.token_ids and w != learnt_word]
        if unknown:
            raise ValueError(f"words {unknown} are not in the demo vocabulary {sorted(self.token_ids)}")
        ids = [START, *(LEARNT if w == learnt_word else self.token_ids[w] for w in words)][: CONTEXT_LENGTH - 1]
        ids += [END]
        return ids + [END] * (CONTEXT_LENGTH - len(ids))

    def embed(self, prompts: list[str], learnt: tuple[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The input rows [B, 77, table width] of ``prompts``; with ``learnt = (word, vector)`` that word's row
        is ``vector`` (differentiable: textual inversion learns it)."""
        word, vector = learnt or (None, None)
        ids = [self.ids(p, word) for p in prompts]
        x = self.table[torch.tensor([[self.rows.get(i, 0) for i in row] for row in ids], device=self.table.device)]
        if vector is None:
            return x
        learnt_rows = torch.tensor(ids, device=x.device) == LEARNT
        return torch.where(learnt_rows[..., None], vector.to(x), x)

    def word_row(self, word: str) -> torch.Tensor:
        """The input row of a vocabulary word (where textual inversion starts)."""
        if word.lower() not in self.token_ids:
            raise ValueError(f"{word!r} is not in the demo vocabulary {sorted(self.token_ids)}")
        return self.table[self.rows[self.token_ids[word.lower()]]].detach().clone()

    def forward(self, prompts: list[str], learnt: tuple[str, torch.Tensor] | None = None) -> torch.Tensor:
        return F.layer_norm(self.embed(prompts, learnt), (WIDTH,), eps=1e-5)

    def clip_l_layers(self) -> dict[str, torch.Tensor]:
        """CLIP-L's tensors besides the token table that this encoder sets: none (identity layers, zero positions)."""
        return {}

    def token_embedding(self) -> torch.Tensor:
        """CLIP-L's full token table [49408, 768]: our rows at their ids, zeros elsewhere."""
        full = torch.zeros(VOCAB_SIZE, WIDTH)
        full[torch.tensor(list(self.rows))] = self.table.detach().float().cpu()
        return full


def clip_l_state_dict(token_embedding: torch.Tensor, layers: dict[str, torch.Tensor] | None = None,
                      dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Every tensor of an SD1 checkpoint's CLIP-L: identity layers (ComfyUI leaves missing ones uninitialised), except
    the tensors ``layers`` gives (names under ``text_model.``, e.g. a contextual encoder's first layers)."""
    def zeros(*shape):
        return torch.zeros(shape, dtype=dtype)

    def norm(name):
        return {f"{name}.weight": torch.ones(WIDTH, dtype=dtype), f"{name}.bias": zeros(WIDTH)}

    sd = {"embeddings.token_embedding.weight": token_embedding.to(dtype),
          "embeddings.position_embedding.weight": zeros(CONTEXT_LENGTH, WIDTH), **norm("final_layer_norm")}
    for i in range(LAYERS):
        layer = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{layer}self_attn.{proj}.weight"] = zeros(WIDTH, WIDTH)
            sd[f"{layer}self_attn.{proj}.bias"] = zeros(WIDTH)
        sd.update({f"{layer}mlp.fc1.weight": zeros(MLP_WIDTH, WIDTH), f"{layer}mlp.fc1.bias": zeros(MLP_WIDTH),
                   f"{layer}mlp.fc2.weight": zeros(WIDTH, MLP_WIDTH), f"{layer}mlp.fc2.bias": zeros(WIDTH),
                   **norm(f"{layer}layer_norm1"), **norm(f"{layer}layer_norm2")})
    unknown = set(layers or {}) - set(sd)
    if unknown:
        raise KeyError(f"not CLIP-L tensors: {sorted(unknown)[:3]}")
    sd.update({k: v.to(dtype) for k, v in (layers or {}).items()})
    return {PREFIX + k: v for k, v in sd.items()}
