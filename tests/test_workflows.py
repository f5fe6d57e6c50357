"""The shipped workflows agree with the host's node definitions, and each UI file with its API twin."""

from __future__ import annotations

import json

import pytest

from workflow_format import API_WORKFLOWS, WORKFLOWS, input_spec, newer_host_nodes_missing, ui_to_api

API_FILES = sorted(API_WORKFLOWS.glob("*.json"))
# inputs naming model files, which the test host does not have
MODEL_FILES = ("ckpt_name", "erasure_file", "unet_name", "clip_name1", "clip_name2", "vae_name")


def skip_on_older_host(prompt: dict, node_names) -> None:
    missing = newer_host_nodes_missing(prompt, node_names)
    if missing:
        pytest.skip(f"this ComfyUI (the bundled March 2024 one) has no {', '.join(missing)}: run with "
                    "COMFYUI_PATH=<current>")


def test_every_api_workflow_has_a_ui_twin():
    assert len(API_FILES) >= 4
    for api in API_FILES:
        assert (WORKFLOWS / api.name).is_file(), api.name


@pytest.mark.parametrize("api_file", API_FILES, ids=[f.stem for f in API_FILES])
def test_ui_workflow_converts_to_its_api_twin(comfy, api_file):
    skip_on_older_host(json.loads(api_file.read_text()), comfy.NODE_CLASS_MAPPINGS)
    ui = json.loads((WORKFLOWS / api_file.name).read_text())
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui_to_api(ui, comfy.NODE_CLASS_MAPPINGS) == json.loads(api_file.read_text())


@pytest.mark.parametrize("api_file", API_FILES, ids=[f.stem for f in API_FILES])
def test_api_workflow_uses_known_nodes_and_valid_choices(comfy, api_file):
    skip_on_older_host(json.loads(api_file.read_text()), comfy.NODE_CLASS_MAPPINGS)
    for nid, node in json.loads(api_file.read_text()).items():
        cls = comfy.NODE_CLASS_MAPPINGS[node["class_type"]]
        spec = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
        for name in cls.INPUT_TYPES()["required"]:
            assert name in node["inputs"], f"node {nid} misses required input {name}"
        for name, value in node["inputs"].items():
            kind = input_spec(spec[name])[0]
            if isinstance(kind, list) and not isinstance(value, list) and name not in MODEL_FILES:
                assert value in kind, f"node {nid}: {name}={value!r} is not one of {kind}"
