"""What the running ComfyUI offers: the V3 node API (``comfy_api.latest``, ComfyUI 0.3.48 and later) or not.

``io`` is the module the nodes are declared against: ComfyUI's own where it has the V3 API, else
``io_fallback`` (the same declarations rendered as V1 node classes).
"""

from __future__ import annotations

import importlib.util


def _has_v3_api() -> bool:
    try:
        return importlib.util.find_spec("comfy_api.latest") is not None
    except ModuleNotFoundError:  # no comfy_api package at all (hosts before 2025)
        return False


HAS_V3_API = _has_v3_api()

if HAS_V3_API:
    from comfy_api.latest import io, ui
else:
    from . import io_fallback as io

    ui = None

# the pack's own socket types
CONCEPT_SET = io.Custom("CONCEPT_SET")
ERASURE = io.Custom("ERASURE")


def shown(node: type, text: str | None = None, image=None) -> dict | None:
    """What a node shows on itself: its text, and (V3 hosts) its IMAGE output as a preview."""
    out = {}
    if text is not None:
        out["text"] = [text]
    if image is not None and ui is not None:
        out["images"] = ui.PreviewImage(image, cls=node).values
    return out or None
