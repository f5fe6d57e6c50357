"""The precision option: what ``auto`` picks, the old names of saved workflows, loss scaling."""

from __future__ import annotations

import pytest
import torch

from helpers import inputs_in_v1_form
from unlearn_core.trainer import LEGACY_PRECISIONS, PRECISIONS, EraseConfig, resolve_precision

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_computes_in_a_half_precision_models_own_dtype(dtype):
    # measured on the node path (issue 16): no-autocast in the host's fp16 weights 0.127 s/step,
    # bf16 autocast 0.216, fp16 autocast 0.235: auto must not pick a cast
    assert resolve_precision("auto", dtype, CUDA) == "model_dtype"
    assert resolve_precision("auto", dtype, CPU) == "model_dtype"


def test_auto_uses_bf16_autocast_over_fp32_weights_on_a_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.float32, CUDA) == "autocast_bf16"
    assert resolve_precision("auto", torch.float32, CPU) == "model_dtype"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.float32, CUDA) == "model_dtype"


def test_old_names_of_saved_workflows_mean_what_they_did():
    assert EraseConfig().precision == "auto"
    assert {old: resolve_precision(old, torch.float16, CUDA) for old in LEGACY_PRECISIONS} == {
        "fp32": "model_dtype", "bf16": "autocast_bf16", "fp16": "autocast_fp16"}
    assert all(resolve_precision(name, torch.float32, CUDA) == name for name in PRECISIONS if name != "auto")


def test_the_node_lists_the_new_names_and_accepts_the_old(pack_nodes):
    node = pack_nodes["DivergenceUnlearn"]
    choices, options = inputs_in_v1_form(node.INPUT_TYPES())["required/precision"]
    assert choices == list(PRECISIONS) and options["default"] == "auto"
    assert all(node.validate_inputs(precision=name) is True for name in [*PRECISIONS, *LEGACY_PRECISIONS])
    assert "unknown precision 'fp8'" in node.validate_inputs(precision="fp8")
