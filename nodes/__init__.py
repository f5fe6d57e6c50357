"""The pack's ComfyUI nodes, each declared once as a V3 node (``io.ComfyNode``; see ``host.py`` for ``io``).

Hosts with the V3 API load them through ``comfy_entrypoint``; older hosts get the same classes as V1 nodes
through ``NODE_CLASS_MAPPINGS`` (``io_fallback`` gives them the V1 attributes).
"""

from .paths import register_folders

register_folders()  # before the node modules: Load Concept Set's schema lists models/concept_sets

from .concept_nodes import LoadConceptSet  # noqa: E402
from .erasure_nodes import ApplyErasedUNet, ErasureReport, SaveErasure  # noqa: E402
from .host import HAS_V3_API  # noqa: E402
from .probe_node import RobustnessProbe  # noqa: E402
from .unlearn_node import DivergenceUnlearn  # noqa: E402

NODES = (LoadConceptSet, DivergenceUnlearn, ApplyErasedUNet, SaveErasure, ErasureReport, RobustnessProbe)
# Node ids (in each schema) are part of every saved workflow: never rename them.
SCHEMAS = [node.define_schema() for node in NODES]  # once: Load Concept Set's lists the concept_sets folder
NODE_CLASS_MAPPINGS = {schema.node_id: node for node, schema in zip(NODES, SCHEMAS)}
NODE_DISPLAY_NAME_MAPPINGS = {schema.node_id: schema.display_name for schema in SCHEMAS}

if HAS_V3_API:
    from comfy_api.latest import ComfyExtension

    class DivergenceUnlearnExtension(ComfyExtension):
        async def get_node_list(self) -> list[type]:
            return list(NODES)

    async def comfy_entrypoint() -> ComfyExtension:
        """What ComfyUI calls to load the pack as V3 nodes."""
        return DivergenceUnlearnExtension()
