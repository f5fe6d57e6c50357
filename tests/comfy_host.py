"""The real ComfyUI for the tests: in-process, or as a server on loopback (:mod:`unlearn_demo.headless`)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from unlearn_demo.headless import DEMO_NODES_DIR_NAME, PACK_DIR_NAME, ComfyServer, host_label, prepare_host

__all__ = ["ComfyServer", "host_label", "load_inprocess", "prepare_host", "report_numbers"]


# --------------------------------------------------------------------------- in-process


EXTRA_NODES = ("nodes_flux.py", "nodes_sd3.py")  # FluxGuidance, EmptySD3LatentImage (the Flux workflow)


def load_inprocess(root: Path, cpu: bool = True):
    """Import the host's modules from ``root`` and load this pack through ComfyUI's own loader.

    Returns ComfyUI's ``nodes`` module; the pack's nodes (and the demo's own) are in ``nodes.NODE_CLASS_MAPPINGS``.
    ``cpu=False`` lets the host use its GPU, as ComfyUI started without ``--cpu`` does.
    """
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import nodes

    for folder in (PACK_DIR_NAME, DEMO_NODES_DIR_NAME):  # the server loads both at start-up
        loaded = nodes.load_custom_node(str(root / "custom_nodes" / folder))
        if asyncio.iscoroutine(loaded):
            loaded = asyncio.run(loaded)
        if loaded is False:
            raise RuntimeError(f"ComfyUI failed to import {folder} (see the traceback above)")
    for extra in EXTRA_NODES:  # built-in nodes the shipped workflows use, where this host has them
        if (root / "comfy_extras" / extra).is_file():
            loaded = nodes.load_custom_node(str(root / "comfy_extras" / extra), module_parent="comfy_extras")
            if asyncio.iscoroutine(loaded):
                asyncio.run(loaded)
    return nodes


def report_numbers(text: str) -> dict[str, float]:
    """The first pair's "moved" and the first keep prompt's "drift" percentages from Erasure Report's text."""
    return {key: float(re.search(rf"{key} (-?[\d.]+)%", text).group(1)) for key in ("moved", "drift")}


def pack_module(pack_nodes: dict):
    """The pack's root module as ComfyUI's loader imported it."""
    return sys.modules[next(iter(pack_nodes.values())).__module__.rsplit(".nodes.", 1)[0]]


def pack_submodule(pack_nodes: dict, name: str):
    """A module of the pack as ComfyUI's loader imported it, e.g. ``nodes.comfy_adapter``."""
    return sys.modules[f"{pack_module(pack_nodes).__name__}.{name}"]
