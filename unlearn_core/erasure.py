"""The erasure artefact: per-tensor weight updates plus what made them, saved as safetensors.

One file format serves everyone. Its keys are those ComfyUI's stock LoRA loaders read on every host
since 2023 (``lora_unet_<module path, '.' -> '_'>`` with ``.diff`` / ``.diff_b`` for full updates, or
``.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` for low-rank ones), and its safetensors
header carries our metadata, including the network name of every key, so that nothing has to be
guessed back from the underscored spelling.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from . import __version__

METADATA_KEY = "divergence_unlearn"
FINGERPRINT_SAMPLES = 1024


class ErasureError(ValueError):
    """An erasure file or artefact that cannot be used as asked; the message says what to do."""


def export_prefix(name: str) -> str:
    """``down_blocks.0.attn2.to_k.weight`` -> ``lora_unet_down_blocks_0_attn2_to_k`` (stock LoRA key prefix)."""
    stem = name.rsplit(".", 1)[0]
    return "lora_unet_" + stem.replace(".", "_")


def fingerprint(originals: dict[str, Tensor]) -> str:
    """sha256 over each tensor's shape and up to 1024 evenly spaced values (fp16), in a name-free order.

    Names are left out so that the diffusers and the ldm spelling of one network give one fingerprint.
    """
    digests = []
    for t in originals.values():
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, min(FINGERPRINT_SAMPLES, flat.numel())).long()
        h = hashlib.sha256(str(tuple(t.shape)).encode())
        h.update(flat[idx.to(flat.device)].to(torch.float16).cpu().numpy().tobytes())
        digests.append(h.digest())
    return hashlib.sha256(b"".join(sorted(digests))).hexdigest()[:16]


@dataclass
class Erasure:
    """Updates ``W = W0 + strength * delta`` for named tensors of one network, plus metadata.

    ``full`` holds full float32 deltas; ``lora`` holds ``(up, down, alpha)`` with
    ``delta = (alpha / rank) up @ down`` reshaped to the tensor's shape (``shapes``).
    """

    full: dict[str, Tensor] = field(default_factory=dict)
    lora: dict[str, tuple[Tensor, Tensor, float]] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.full) + list(self.lora)

    def delta(self, name: str) -> Tensor:
        """The full float32 update of tensor ``name``."""
        if name in self.full:
            return self.full[name]
        up, down, alpha = self.lora[name]
        return ((alpha / up.shape[1]) * (up.float() @ down.float())).view(self.shapes[name])

    def deltas(self) -> dict[str, Tensor]:
        return {name: self.delta(name) for name in self.names}

    def require_key_format(self, key_format: str) -> None:
        """Raise :class:`ErasureError` unless the tensors are named in ``key_format`` ("diffusers" or "ldm")."""
        mine = self.metadata.get("key_format")
        if mine == key_format:
            return
        if mine == "ldm":
            raise ErasureError(
                "this erasure came from ComfyUI (its tensors have ComfyUI/ldm names, not diffusers ones): "
                "use its .safetensors file in ComfyUI directly (Apply Erased UNet, or the stock LoraLoaderModelOnly)")
        raise ErasureError(f"this erasure's tensors have {mine or 'unrecorded'} names but {key_format} names are "
                           f"needed here: use it with the kind of model it was trained on")

    def check_against(self, named_shapes: dict[str, tuple[int, ...]], family: str,
                      key_format: str | None = None) -> None:
        """Raise :class:`ErasureError` unless every tensor exists in the model with the same shape
        (and, when ``key_format`` is given, the erasure names its tensors that way)."""
        if key_format is not None:
            self.require_key_format(key_format)
        mine = self.metadata.get("family", "unknown")
        missing = [n for n in self.names if n not in named_shapes]
        wrong = [n for n in self.names if n in named_shapes and tuple(named_shapes[n]) != tuple(self.shapes[n])]
        if missing or wrong:
            example = (missing or wrong)[0]
            raise ErasureError(
                f"this erasure was made for a {mine} model and does not fit this {family} model "
                f"({len(missing)} tensors missing, {len(wrong)} with other shapes, e.g. {example}): "
                f"apply it to the model family it was trained on"
            )

    # ------------------------------------------------------------------ file format

    def to_state_dict(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Tensors under stock-LoRA keys and the header metadata (names map key prefix -> tensor name)."""
        tensors: dict[str, Tensor] = {}
        names: dict[str, str] = {}
        for name, delta in self.full.items():
            key = export_prefix(name) + (".diff_b" if name.endswith(".bias") else ".diff")
            names[key] = name
            tensors[key] = delta.detach().float().contiguous()
        for name, (up, down, alpha) in self.lora.items():
            prefix = export_prefix(name)
            names[prefix + ".lora_up.weight"] = name
            tensors[prefix + ".lora_up.weight"] = up.detach().float().contiguous()
            tensors[prefix + ".lora_down.weight"] = down.detach().float().contiguous()
            tensors[prefix + ".alpha"] = torch.tensor(float(alpha))
        meta = dict(self.metadata, names=names, shapes={n: list(s) for n, s in self.shapes.items()})
        return tensors, {METADATA_KEY: json.dumps(meta), "format": "pt"}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file in the same folder, then rename); never a partial file."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ErasureError(f"erasures are saved as .safetensors only, not {path.name!r}")
        tensors, header = self.to_state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=header)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Erasure":
        """Read a file written by :meth:`save` (safetensors only; no pickle is ever loaded)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ErasureError(f"{path.name!r} is not a .safetensors file; only safetensors erasures are loaded")
        if not path.is_file():
            raise ErasureError(f"no erasure file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for a damaged file
            raise ErasureError(f"{path.name} is not a readable safetensors file ({e})") from None
        if METADATA_KEY not in header:
            raise ErasureError(f"{path.name} has no Divergence Unlearn metadata: it is an ordinary LoRA; "
                               "load it with ComfyUI's LoraLoaderModelOnly instead")
        meta = json.loads(header[METADATA_KEY])
        names, shapes = meta.pop("names"), {n: tuple(s) for n, s in meta.pop("shapes").items()}
        erasure = cls(shapes=shapes, metadata=meta)
        for key, name in names.items():
            if key.endswith(".lora_up.weight"):
                prefix = key[: -len(".lora_up.weight")]
                erasure.lora[name] = (tensors[key], tensors[prefix + ".lora_down.weight"],
                                      float(tensors[prefix + ".alpha"]))
            else:
                erasure.full[name] = tensors[key]
        return erasure


def new_metadata(**fields) -> dict:
    """Metadata common to every erasure (library version) plus the run's own fields."""
    return dict(library="divergence-unlearn", version=__version__, **fields)
