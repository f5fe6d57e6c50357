"""Divergence Unlearn: concept erasure by f-divergence unlearning, as ComfyUI nodes."""

WEB_DIRECTORY = "./web"  # served at /extensions/<pack folder>/: the node help pages in web/docs/<node id>.md

try:
    import folder_paths  # noqa: F401  (exists only inside ComfyUI)
except ImportError:  # imported outside ComfyUI (e.g. by pytest collecting this folder): no nodes to offer
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
