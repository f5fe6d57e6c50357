"""Which tensors an erasure trains, and the trainable deltas on top of them.

The rules that name the tensors of each parameter set live with each architecture
(``architectures.ARCHITECTURES``); this module selects by them and holds the deltas.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .architectures import ARCHITECTURES, PARAMETER_SET_NAMES
from .keep_projection import project_off_


def select_parameters(net: nn.Module, parameter_set: str, architecture: str = "unet") -> list[str]:
    """Names of the tensors of ``net`` that ``parameter_set`` trains, in ``named_parameters`` order."""
    if parameter_set not in PARAMETER_SET_NAMES:
        raise ValueError(f"unknown parameter set {parameter_set!r}; choose one of {', '.join(PARAMETER_SET_NAMES)}")
    rule = ARCHITECTURES[architecture].parameter_sets[parameter_set]
    names = [name for name, _ in net.named_parameters() if rule(name)]
    if not names:
        raise ValueError(
            f"parameter set {parameter_set!r} matches no tensor of this {architecture} network"
            + (": it has no 'attn2' cross-attention layers, so it is not a Stable Diffusion-style UNet"
               if architecture == "unet" and parameter_set != "context_embedder" else
               "; see the README's table of parameter sets per architecture and choose another")
        )
    return names


class WeightDeltas(nn.Module):
    """Trainable additive updates ``W = W0 + delta`` for a set of named tensors, kept in float32.

    ``rank == 0`` trains full deltas; ``rank > 0`` trains a LoRA ``delta = (alpha / rank) up @ down``
    (``up`` starts at zero, so the initial model is the original) for tensors with two or more
    dimensions, and full deltas for 1-D tensors (biases, norms).
    """

    def __init__(self, originals: dict[str, Tensor], rank: int = 0, alpha: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.names = list(originals)
        self._index = {name: i for i, name in enumerate(self.names)}
        self.shapes = {n: tuple(t.shape) for n, t in originals.items()}
        self.rank = rank
        self.alpha = float(alpha if alpha is not None else rank)
        self.full = nn.ParameterDict()
        self.up = nn.ParameterDict()
        self.down = nn.ParameterDict()
        for i, (name, w) in enumerate(originals.items()):
            key = str(i)
            if rank > 0 and w.dim() >= 2:
                fan_in = math.prod(w.shape[1:])
                r = min(rank, w.shape[0], fan_in)
                down = torch.randn(r, fan_in, generator=generator) / math.sqrt(fan_in)
                self.down[key] = nn.Parameter(down.to(w.device))
                self.up[key] = nn.Parameter(torch.zeros(w.shape[0], r, device=w.device))
            else:
                self.full[key] = nn.Parameter(torch.zeros(w.shape, device=w.device, dtype=torch.float32))

    def delta(self, index: int) -> Tensor:
        """The float32 update of tensor ``index``: the full delta, or (alpha / rank) up @ down reshaped."""
        key = str(index)
        if key in self.full:
            return self.full[key]
        up, down = self.up[key], self.down[key]
        return (self.alpha / up.shape[1]) * (up @ down).view(self.shapes[self.names[index]])

    @torch.no_grad()
    def project_inputs_(self, names: list[str], basis: Tensor, grads: bool = False) -> None:
        """Make the updates of the layers' tensors ``names`` (or, with ``grads``, their gradients) blind to
        span(basis) on their input side, in place.

        A LoRA's ``down`` is projected, (up @ down) U = up @ (down U); a bias, which adds to every row the layer
        reads, is held at zero."""
        for name in names:
            key = str(self._index[name])
            tensor = self.full[key] if key in self.full else self.down[key]
            tensor = tensor.grad if grads else tensor
            if tensor is None:
                continue
            if tensor.dim() == 1:
                tensor.zero_()
            else:
                project_off_(tensor, basis.to(tensor.dtype))

    def delta_of(self, name: str) -> Tensor:
        """The float32 update of the tensor called ``name``."""
        return self.delta(self._index[name])
