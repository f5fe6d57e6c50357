"""Divergence Unlearn: concept erasure by f-divergence unlearning, as ComfyUI nodes.

ComfyUI with the V3 node API (0.3.48 and later) gets the nodes through ``comfy_entrypoint``, older hosts
through the V1 mappings; both are the same node classes (``nodes/``). Never export both: ComfyUI loads a module
that has ``NODE_CLASS_MAPPINGS`` as V1 and then ignores its ``comfy_entrypoint``.
"""

WEB_DIRECTORY = "./web"  # served at /extensions/<pack folder>/: the node help pages in web/docs/<node id>.md

try:
    import folder_paths  # noqa: F401  (exists only inside ComfyUI)
except ImportError:  # imported outside ComfyUI (e.g. by pytest collecting this folder): no nodes to offer
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
else:
    from .nodes.host import HAS_V3_API

    if HAS_V3_API:
        from .nodes import comfy_entrypoint

        __all__ = ["comfy_entrypoint"]
    else:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

        __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
