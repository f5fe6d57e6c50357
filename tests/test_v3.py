"""V3 nodes where the host has the V3 API, V1 nodes on older hosts, both from one definition (``nodes/v3.py``).

Run on both hosts: the default 2024 one (V1 path) and ``COMFYUI_PATH=<ComfyUI 0.3.48 or later>`` (V3 path);
tests that need the V3 API say so when skipped. In-process: what the pack exports, each V3 schema against
its V1 ``INPUT_TYPES``, the generation from a V1 class that uses every kind of input, and the V3 execute
path with its previews. Through servers (slow): ``/object_info`` of the 2024 host and of the V3 host give
the same inputs, and training on the V3 host streams loss-chart previews over the websocket.
"""

from __future__ import annotations

import asyncio
import io as bytes_io
import json
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from comfy_host import ComfyServer, pack_module, pack_submodule, prepare_host
from workflow_format import API_WORKFLOWS

ALWAYS_WRITTEN_BY_V3 = ("multiselect", "multiline")  # V3 inputs write these flags even when False
PREVIEW_IMAGE_WITH_METADATA = 4  # ComfyUI's protocol.BinaryEventTypes


@pytest.fixture(scope="module")
def v3(pack_nodes):
    """``nodes/v3.py``; skips on hosts without the V3 API."""
    if not pack_submodule(pack_nodes, "nodes.host").HAS_V3_API:
        pytest.skip("this host has no V3 API: run with COMFYUI_PATH=<ComfyUI 0.3.48 or later>")
    return pack_submodule(pack_nodes, "nodes.v3")


def inputs_in_v1_form(input_types: dict) -> dict:
    """Required and optional inputs as ``{name: (type or combo choices, options)}``, V1 or V3 style alike."""
    out = {}
    for section in ("required", "optional"):
        for name, entry in input_types.get(section, {}).items():
            kind, options = entry[0], dict(entry[1] if len(entry) > 1 else {})
            if kind == "COMBO":
                kind = options.pop("options")
            for flag in ALWAYS_WRITTEN_BY_V3:
                if options.get(flag) is False:
                    del options[flag]
            out[f"{section}/{name}"] = (kind if isinstance(kind, list) else str(kind), options)
    return out


def outputs_of(cls) -> dict:
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    tooltips = getattr(cls, "OUTPUT_TOOLTIPS", None) or [None] * len(cls.RETURN_TYPES)
    return {"types": [str(t) for t in cls.RETURN_TYPES], "names": list(names), "tooltips": list(tooltips),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)), "category": cls.CATEGORY,
            "description": cls.DESCRIPTION}


def run_v3(node, hidden: dict | None = None, **inputs):
    """Run a V3 node the way ComfyUI's executor does: on a locked clone of its class."""
    from comfy_api.internal import make_locked_method_func

    return make_locked_method_func(node, node.FUNCTION, node.PREPARE_CLASS_CLONE(hidden or {}))(**inputs)


def defaults(node) -> dict:
    """Every input of a node that has a default, at its default."""
    spec = node.INPUT_TYPES()
    return {name: entry[1]["default"] for section in ("required", "optional")
            for name, entry in spec.get(section, {}).items() if len(entry) > 1 and "default" in entry[1]}


# --------------------------------------------------------------------------- in-process


def test_pack_exports_v3_nodes_only_where_the_host_has_the_v3_api(comfy, pack_nodes, v1_nodes):
    root = pack_module(pack_nodes)
    assert set(pack_nodes) == set(v1_nodes)  # the same node ids on every host
    if pack_submodule(pack_nodes, "nodes.host").HAS_V3_API:
        from comfy_api.latest import io

        assert hasattr(root, "comfy_entrypoint") and not hasattr(root, "NODE_CLASS_MAPPINGS")
        for node_id, cls in pack_nodes.items():
            assert issubclass(cls, io.ComfyNode) and issubclass(cls, v1_nodes[node_id])
            assert cls.GET_SCHEMA().node_id == node_id
            assert comfy.NODE_DISPLAY_NAME_MAPPINGS[node_id] == cls.GET_SCHEMA().display_name
    else:
        assert not hasattr(root, "comfy_entrypoint") and root.NODE_CLASS_MAPPINGS == v1_nodes
        assert all(pack_nodes[node_id] is cls for node_id, cls in v1_nodes.items())


def test_every_v3_schema_matches_its_v1_definition(v3, pack_nodes, v1_nodes):
    for node_id, cls in pack_nodes.items():
        v1 = v1_nodes[node_id]
        assert inputs_in_v1_form(cls.INPUT_TYPES()) == inputs_in_v1_form(v1.INPUT_TYPES()), node_id
        assert outputs_of(cls) == outputs_of(v1), node_id


class Example:
    """A V1 node with every kind of input and option, and the V1 extras (hidden input, validation, IS_CHANGED)."""

    DESCRIPTION = "An example."
    CATEGORY = "testing"
    RETURN_TYPES = ("STRING", "EXAMPLE_THING")
    RETURN_NAMES = ("text", "thing")
    OUTPUT_TOOLTIPS = ("Some text.", "A thing.")
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "count": ("INT", {"default": 3, "min": 1, "max": 9, "step": 2, "display": "slider", "tooltip": "n"}),
                "scale": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "round": False}),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": False, "default": "a {}"}),
                "flag": ("BOOLEAN", {"default": True, "label_on": "yes", "label_off": "no"}),
                "mode": (["a", "b"], {"default": "b", "tooltip": "a choice"}),
                "thing": ("EXAMPLE_THING", {"tooltip": "a custom type; its name is also an output's"}),
                "linked": ("INT", {"default": 0, "forceInput": True}),
            },
            "optional": {"model": ("MODEL",), "newer": ("STRING", {"an_option_from_a_later_comfyui": 1})},
            "hidden": {"node_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, count):
        return count != 5 or "5 is not allowed"

    @classmethod
    def IS_CHANGED(cls, count, **others):
        return count * 10

    def run(self, count, scale, text, flag, mode, thing, linked, node_id, model=None, newer=""):
        return {"ui": {"text": [f"node {node_id}"]}, "result": (f"{count} {mode} {text.format(thing)}", thing)}


def test_v3_node_is_generated_from_any_v1_definition(v3):
    from comfy_api.internal import first_real_override
    from comfy_api.latest import io

    node = v3.v3_node("DivergenceUnlearnTestExample", Example)
    assert inputs_in_v1_form(node.INPUT_TYPES()) == inputs_in_v1_form(Example.INPUT_TYPES())
    assert outputs_of(node) == outputs_of(Example)
    schema = node.GET_SCHEMA()
    assert schema.is_output_node and io.Hidden.unique_id in schema.hidden
    assert [type(i) for i in schema.inputs[:6]] == [io.Int.Input, io.Float.Input, io.String.Input, io.Boolean.Input,
                                                    io.Combo.Input, v3.io_type("EXAMPLE_THING").Input]
    assert isinstance(schema.inputs[7], io.Model.Input) and schema.inputs[7].optional

    out = run_v3(node, {io.Hidden.unique_id: "7"}, count=3, scale=0.5, text="a {}", flag=True, mode="b",
                 thing="circle", linked=1)
    assert out.args == ("3 b a circle", "circle") and out.ui == {"text": ["node 7"]}
    # ComfyUI calls validate_inputs with the inputs its signature names (they skip the built-in range checks)
    validate = first_real_override(node, "validate_inputs")
    assert validate is not None and "count" in validate.__func__.__code__.co_varnames
    assert node.validate_inputs(count=5) == "5 is not allowed" and node.validate_inputs(count=3) is True
    assert first_real_override(node, "fingerprint_inputs")(count=4, mode="a") == 40


def test_v3_execute_trains_and_shows_the_loss_chart_live_and_on_the_node(v3, pack_nodes, sd15_model, sd15_clip):
    """The V3 path as ComfyUI's executor takes it; a progress hook stands in for the server's, which
    passes each preview on to the node (``test_training_on_the_v3_host_streams_loss_chart_previews``)."""
    import comfy.utils
    import folder_paths

    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **_: updates.append((value, total, preview)))
    try:
        with torch.inference_mode():
            load = pack_nodes["DivergenceUnlearnLoadConceptSet"]
            concepts = run_v3(load, **defaults(load) | {"text": "a red circle -> a red shape"}).args[0]
            node = pack_nodes["DivergenceUnlearn"]
            out = run_v3(node, **defaults(node) | dict(
                model=sd15_model, clip=sd15_clip, concepts=concepts, steps=20, learning_rate=1e-3, batch_size=1,
                resolution=32, anchor_samples=1, sample_steps=2, precision="fp32", erase_until=0.0))  # all 20 steps
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    model, erasure, chart = out.args
    assert len(erasure.metadata.history) == 20 and chart.shape[-1] == 3
    assert [value for value, total, _ in updates if total == 20] == list(range(1, 21))
    previews = [(value, preview) for value, _, preview in updates if preview is not None]
    assert [value for value, _ in previews] == [10, 20]
    assert all(kind == "PNG" and image.size == (640, 360) for _, (kind, image, _) in previews)
    shown = out.ui["images"]
    assert len(shown) == 1 and shown[0]["type"] == "temp"
    with Image.open(Path(folder_paths.get_temp_directory(), shown[0]["subfolder"], shown[0]["filename"])) as img:
        assert img.size == (chart.shape[2], chart.shape[1])


# --------------------------------------------------------------------------- through servers


@pytest.mark.slow
def test_object_info_gives_the_same_inputs_on_the_2024_host_and_the_v3_host(v3, tmp_path, monkeypatch):
    """Fresh servers of both hosts (empty model folders, so that file lists agree)."""
    servers = {"v3": ComfyServer(prepare_host(tmp_path / "v3"), tmp_path / "v3-run")}
    monkeypatch.delenv("COMFYUI_PATH")
    servers["2024"] = ComfyServer(prepare_host(tmp_path / "2024"), tmp_path / "2024-run")
    infos = {}
    try:
        for name, server in servers.items():
            server.start()
            infos[name] = server.get("/object_info")
    finally:
        for server in servers.values():
            server.stop()
    ours = sorted(k for k in infos["2024"] if k.startswith("DivergenceUnlearn"))
    assert len(ours) == 6 and ours == sorted(k for k in infos["v3"] if k.startswith("DivergenceUnlearn"))
    for node_id in ours:
        old, new = infos["2024"][node_id], infos["v3"][node_id]
        assert inputs_in_v1_form(new["input"]) == inputs_in_v1_form(old["input"]), node_id
        for key in ("output", "output_name", "output_is_list", "name", "display_name", "description", "category",
                    "output_node"):
            assert new[key] == old[key], (node_id, key)
    combo = infos["v3"]["DivergenceUnlearn"]["input"]["required"]["divergence"]
    assert combo[0] == "COMBO" and "hellinger" in combo[1]["options"]  # served by the V3 nodes


@pytest.mark.slow
def test_training_on_the_v3_host_streams_loss_chart_previews(v3, server):
    import aiohttp

    from helpers import adapt_for_tiny

    prompt = adapt_for_tiny(json.loads((API_WORKFLOWS / "erase_then_generate.json").read_text()))
    unlearn_id = next(k for k, n in prompt.items() if n["class_type"] == "DivergenceUnlearn")
    prompt[unlearn_id]["inputs"].update(steps=20, seed=4242)  # not cached from other tests

    async def collect() -> tuple[list[dict], list[tuple[dict, bytes]]]:
        messages, previews = [], []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url}/ws?clientId={server.client_id}") as ws:
                await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
                prompt_id = server.queue(prompt)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        event, = struct.unpack(">I", msg.data[:4])
                        if event == PREVIEW_IMAGE_WITH_METADATA:
                            length, = struct.unpack(">I", msg.data[4:8])
                            previews.append((json.loads(msg.data[8:8 + length]), msg.data[8 + length:]))
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        messages.append(data)
                        if data["type"] == "executing" and data["data"].get("node") is None \
                                and data["data"].get("prompt_id") == prompt_id:
                            return messages, previews
        return messages, previews

    messages, previews = asyncio.run(asyncio.wait_for(collect(), timeout=600))
    ours = [meta for meta, _ in previews if meta["node_id"] == unlearn_id]
    assert len(ours) == 2, [meta for meta, _ in previews]  # at steps 10 and 20
    for meta, data in previews:
        if meta["node_id"] == unlearn_id:
            with Image.open(bytes_io.BytesIO(data)) as img:
                assert img.size[0] > 100 and img.size[1] > 50
    states = [m["data"]["nodes"].get(unlearn_id) for m in messages if m["type"] == "progress_state"]
    assert any(s and s["max"] == 20 and s["value"] == 20 for s in states)
    shown = next(m["data"]["output"] for m in messages
                 if m["type"] == "executed" and m["data"]["node"] == unlearn_id)["images"]
    assert len(shown) == 1 and shown[0]["type"] == "temp"
    assert (server.root / "temp" / shown[0]["subfolder"] / shown[0]["filename"]).is_file()
