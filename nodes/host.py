"""What the running ComfyUI offers: the V3 node API (``comfy_api.latest``, ComfyUI 0.3.48 and later) or not."""

from __future__ import annotations

import importlib.util


def _has_v3_api() -> bool:
    try:
        return importlib.util.find_spec("comfy_api.latest") is not None
    except ModuleNotFoundError:  # no comfy_api package at all (hosts before 2025)
        return False


HAS_V3_API = _has_v3_api()
