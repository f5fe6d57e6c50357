"""Keep projection: updates of the weights that read the text conditioning leave the keep prompts' rows unchanged.

A weight W that reads the conditioning directly (a UNet's cross-attention K and V, Flux's ``txt_in``,
SD3's ``context_embedder``) sees a prompt only through its text rows c: W' c = W c + ΔW c. If every
update satisfies ΔW U = 0, with U an orthonormal basis of the keep prompts' rows, then W' c = W c for
every keep row, so with ``cross_attn_kv`` the keep prompts predict exactly as the original model does,
at every x_t and timestep, not only where the keep loss samples them. The erasure trains through what
the target's rows have outside that span (the rows of the words only the target has). On a text
encoder that mixes words (CLIP), other prompts are protected as far as their rows lie in the span.
"""

from __future__ import annotations

import torch
from torch import Tensor

RELATIVE_TOLERANCE = 1e-3  # singular values below this fraction of the largest are numerical noise, not directions
MIN_TRAINABLE = 0.05  # below this share of its most distinct row outside the span a target is left no room: no projection


def keep_basis(rows: Tensor, tolerance: float = RELATIVE_TOLERANCE) -> Tensor:
    """U [d, k]: orthonormal basis of span(rows [n, d]), the right singular vectors with s >= tolerance * s_max."""
    _, s, vh = torch.linalg.svd(rows.double(), full_matrices=False)
    return vh[: int((s >= tolerance * s[0]).sum())].T.float()


def outside_share(rows: Tensor, basis: Tensor) -> Tensor:
    """||r - U U^T r|| / ||r|| per row [n]: how much of each row an update orthogonal to U can still act on."""
    rows = rows.double()
    inside = rows @ basis.double() @ basis.double().T
    return ((rows - inside).norm(dim=-1) / rows.norm(dim=-1).clamp_min(1e-12)).float()


def project_off_(weight_like: Tensor, basis: Tensor) -> None:
    """X <- X - (X U) U^T in place: X's rows (input side) become orthogonal to span(U)."""
    weight_like -= (weight_like @ basis) @ basis.T
