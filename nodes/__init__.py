"""The pack's ComfyUI nodes, defined once as V1 classes; ``v3.py`` makes V3 nodes of them for hosts with the V3 API."""

from .concept_nodes import LoadConceptSet
from .erasure_nodes import ApplyErasedUNet, ErasureReport, SaveErasure
from .paths import register_folders
from .probe_node import RobustnessProbe
from .unlearn_node import DivergenceUnlearn

register_folders()

# Node ids are part of every saved workflow: never rename them.
NODE_CLASS_MAPPINGS = {
    "DivergenceUnlearnLoadConceptSet": LoadConceptSet,
    "DivergenceUnlearn": DivergenceUnlearn,
    "DivergenceUnlearnApplyErasure": ApplyErasedUNet,
    "DivergenceUnlearnSaveErasure": SaveErasure,
    "DivergenceUnlearnErasureReport": ErasureReport,
    "DivergenceUnlearnRobustnessProbe": RobustnessProbe,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DivergenceUnlearnLoadConceptSet": "Load Concept Set",
    "DivergenceUnlearn": "Divergence Unlearn (α)",
    "DivergenceUnlearnApplyErasure": "Apply Erased UNet",
    "DivergenceUnlearnSaveErasure": "Save Erasure",
    "DivergenceUnlearnErasureReport": "Erasure Report",
    "DivergenceUnlearnRobustnessProbe": "Robustness Probe",
}
