"""The erasure artefact: per-tensor weight updates plus what made them, saved as safetensors.

One file format serves everyone. Its keys are those ComfyUI's stock LoRA loaders read on every host
since 2023 (``lora_unet_<module path, '.' -> '_'>`` with ``.diff`` / ``.diff_b`` for full updates, or
``.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` for low-rank ones), and its safetensors
header carries our metadata, including the network name of every key, so that nothing has to be
guessed back from the underscored spelling.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .atomic_write import write_atomically, write_numbered
from .bounded_parse import ParseError, dump_json, load_json
from .metadata import ErasureMetadata, MalformedMetadata

METADATA_KEY = "divergence_unlearn"
FINGERPRINT_SAMPLES = 1024


class ErasureError(ValueError):
    """An erasure file or artefact that cannot be used as asked; the message says what to do."""


class DamagedErasureError(ErasureError):
    """An erasure file whose tensors or metadata are malformed: "<file>: this erasure file is damaged: <what>"."""


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
        idx = idx.clamp_max(flat.numel() - 1)  # float32 positions round past the end over 2^24 values (Flux's qkv)
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
    metadata: ErasureMetadata = field(default_factory=ErasureMetadata)

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
        mine = self.metadata.key_format
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
        mine = self.metadata.family
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
        meta = dict(self.metadata.to_json(), names=names, shapes={n: list(s) for n, s in self.shapes.items()})
        return tensors, {METADATA_KEY: dump_json(meta), "format": "pt"}

    def _writer(self):
        """``write(path)``: the safetensors file of this erasure (for :mod:`.atomic_write`)."""
        tensors, header = self.to_state_dict()
        return lambda tmp: save_file(tensors, tmp, metadata=header)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` atomically (replacing a file of that name); never a partial file."""
        path = Path(path)
        if path.suffix.lower() != ".safetensors":
            raise ErasureError(f"erasures are saved as .safetensors only, not {path.name!r}")
        return write_atomically(path, self._writer())

    def save_numbered(self, folder: str | os.PathLike, stem: str) -> Path:
        """Write ``<folder>/<stem>_<NNNNN>.safetensors`` under the first free number; never overwrites a file."""
        return write_numbered(folder, stem, ".safetensors", self._writer())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Erasure":
        """Read a file written by :meth:`save` (safetensors only; no pickle is ever loaded).

        Every tensor and metadata field is checked: a malformed file raises :class:`DamagedErasureError`.
        """
        path = Path(path)
        if path.suffix.lower() != ".safetensors":
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
        try:
            return _from_file(header[METADATA_KEY], tensors)
        except _Damage as e:
            raise DamagedErasureError(f"{path.name}: this erasure file is damaged: {e}") from None


# ---------------------------------------------------------------------- reading a file back


class _Damage(Exception):
    """What is wrong in a file (wrapped into :class:`DamagedErasureError` with the file's name)."""


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _tensor_names(meta) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The header's ``names`` (tensor key -> tensor name) and ``shapes``, popped from ``meta``, else :class:`_Damage`."""
    if not isinstance(meta, dict):
        raise _Damage(f"its metadata is a {type(meta).__name__}, not a mapping")
    names, shapes = meta.pop("names", None), meta.pop("shapes", None)
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise _Damage("metadata field 'names' is missing or not a mapping of tensor keys to names")
    if not isinstance(shapes, dict) or not all(
            isinstance(s, list) and s and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s)
            for s in shapes.values()):
        raise _Damage("metadata field 'shapes' is missing or not a mapping of names to lists of positive sizes")
    if sorted(names.values()) != sorted(shapes):
        raise _Damage("metadata fields 'names' and 'shapes' list different tensors")
    if len(set(names.values())) != len(names):
        raise _Damage("metadata field 'names' gives one tensor name to several keys")
    return names, {n: tuple(s) for n, s in shapes.items()}


def _tensor(tensors: dict[str, Tensor], key: str, dims: int | None = None) -> Tensor:
    """``tensors[key]`` when present, floating point, finite and ``dims``-dimensional, else :class:`_Damage`."""
    if key not in tensors:
        raise _Damage(f"tensor {key} is missing")
    t = tensors[key]
    if t.dtype not in FLOAT_DTYPES:
        raise _Damage(f"tensor {key} holds {t.dtype}, not float16, bfloat16, float32 or float64 numbers")
    if dims is not None and t.dim() != dims:
        raise _Damage(f"tensor {key} has {t.dim()} dimensions, not {dims}")
    if not torch.isfinite(t).all():
        raise _Damage(f"tensor {key} holds NaN or infinite values")
    return t


def _from_file(meta_text: str, tensors: dict[str, Tensor]) -> Erasure:
    """The erasure in a file's metadata text and tensors, every field and tensor checked."""
    try:
        meta = load_json(meta_text)
        names, shapes = _tensor_names(meta)
        erasure = Erasure(shapes=shapes, metadata=ErasureMetadata.from_json(meta))
    except (ParseError, MalformedMetadata) as e:
        raise _Damage(f"its metadata is not readable ({e})" if isinstance(e, ParseError) else str(e)) from None
    used = set()
    for key, name in names.items():
        shape = shapes[name]
        if key.endswith(".lora_up.weight"):
            prefix = key[: -len(".lora_up.weight")]
            keys = (key, prefix + ".lora_down.weight", prefix + ".alpha")
            up, down, alpha = _tensor(tensors, keys[0], 2), _tensor(tensors, keys[1], 2), _tensor(tensors, keys[2])
            if alpha.numel() != 1:
                raise _Damage(f"tensor {keys[2]} holds {alpha.numel()} values, not one")
            if up.shape[1] != down.shape[0] or up.shape[1] == 0:
                raise _Damage(f"{prefix}: lora_up {tuple(up.shape)} and lora_down {tuple(down.shape)} do not "
                              "share a rank of at least 1")
            if (up.shape[0], down.shape[1]) != (shape[0], math.prod(shape[1:])):
                raise _Damage(f"{prefix}: lora_up {tuple(up.shape)} times lora_down {tuple(down.shape)} does not "
                              f"make its recorded shape {shape}")
            erasure.lora[name] = (up, down, float(alpha))
        elif key.endswith((".diff", ".diff_b")):
            keys = (key,)
            delta = _tensor(tensors, key)
            if tuple(delta.shape) != shape:
                raise _Damage(f"tensor {key} has shape {tuple(delta.shape)}, not its recorded {shape}")
            erasure.full[name] = delta
        else:
            raise _Damage(f"key {key} in 'names' is neither a .diff, .diff_b nor .lora_up.weight key")
        used.update(keys)
    extra = sorted(set(tensors) - used)
    if extra:
        raise _Damage(f"{len(extra)} tensors are not named in its metadata, e.g. {extra[0]}")
    return erasure

