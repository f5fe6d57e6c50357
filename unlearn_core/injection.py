"""How trained tensors enter the network during an erasure, and optional gradient checkpointing.

:class:`DeltaInjection` takes the trained tensors' parameters out of their modules for the duration
of a ``with`` block and gives each module, just before every forward, ``W0 + delta`` (or ``W0`` in
:meth:`DeltaInjection.frozen`). Because the weights are recomputed per forward, a checkpointed block
that reruns its forward during backward sees the same trained weights. On exit every parameter is
put back as it was: the network is unchanged, bit for bit. Only the deltas are extra memory.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class DeltaInjection:
    """Serve ``W0 + delta(name)`` to the modules that own the named tensors of ``net`` (see module doc)."""

    def __init__(self, net: nn.Module, names: list[str], delta: Callable[[str], Tensor],
                 fp8_compute: torch.dtype = torch.float32):
        self.net = net
        self.names = names
        self.delta = delta
        self.fp8_compute = fp8_compute  # fp8 weights (torch cannot add to them) are served in this dtype
        self.use_deltas = True
        self._saved: dict[str, tuple[nn.Module, str, nn.Parameter]] = {}
        self._hooks: list = []

    def __enter__(self) -> "DeltaInjection":
        by_module: dict[str, list[str]] = defaultdict(list)
        for name in self.names:
            owner, _, attr = name.rpartition(".")
            by_module[owner].append(attr)
        try:
            for owner, attrs in by_module.items():
                module = self.net.get_submodule(owner)
                for attr in attrs:
                    param = module._parameters.pop(attr)
                    self._saved[_joined(owner, attr)] = (module, attr, param)
                    object.__setattr__(module, attr, param.detach())  # readable before the first forward
                self._hooks.append(module.register_forward_pre_hook(self._hook(owner, attrs)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _hook(self, owner: str, attrs: list[str]):
        def set_weights(module: nn.Module, args) -> None:
            for attr in attrs:
                _, _, original = self._saved[_joined(owner, attr)]
                value = original.detach()
                if self.use_deltas:
                    dtype = original.dtype if original.element_size() > 1 else self.fp8_compute
                    value = value.to(dtype) + self.delta(_joined(owner, attr)).to(dtype)
                object.__setattr__(module, attr, value)
        return set_weights

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        for module, attr, param in self._saved.values():
            module.__dict__.pop(attr, None)
            module._parameters[attr] = param
        self._hooks, self._saved = [], {}

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Inside this block the network computes with its original weights."""
        self.use_deltas = False
        try:
            yield
        finally:
            self.use_deltas = True


def _joined(owner: str, attr: str) -> str:
    """The parameter's name in the network (a tensor of the root module has no owner path)."""
    return f"{owner}.{attr}" if owner else attr


def _on_copies(forward: Callable) -> Callable:
    """``forward`` on copies of its tensor arguments: a block that adds into its inputs in place (Flux's
    ``txt += ...``) must not change the tensors checkpoint keeps to recompute it from."""
    def run(*args, **kwargs):
        copy = lambda v: v.clone() if isinstance(v, Tensor) else v  # noqa: E731
        return forward(*map(copy, args), **{k: copy(v) for k, v in kwargs.items()})
    return run


@contextlib.contextmanager
def checkpointed(net: nn.Module, block_names: list[str], copy_inputs: bool = False) -> Iterator[None]:
    """Recompute each named block's activations during backward instead of storing them (``copy_inputs``:
    for blocks that add into their inputs in place)."""
    blocks = [net.get_submodule(name) for name in block_names]
    for block in blocks:
        original = _on_copies(block.forward) if copy_inputs else block.forward
        block.forward = lambda *a, _f=original, **k: (
            checkpoint(_f, *a, use_reentrant=False, **k) if torch.is_grad_enabled() else _f(*a, **k))
    try:
        yield
    finally:
        for block in blocks:
            del block.forward
