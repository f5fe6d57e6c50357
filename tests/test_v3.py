"""The nodes are declared once as V3 nodes: against ComfyUI's ``comfy_api.latest.io`` where the host has it,
else against ``nodes/io_fallback.py``, which renders them as V1 node classes.

Run on both hosts: the default 2024 one (V1 path) and ``COMFYUI_PATH=<ComfyUI 0.3.48 or later>`` (V3 path);
tests that need the V3 API say so when skipped. In-process: what the pack exports, one example node declared
against both modules (same inputs, outputs, hooks and results), the fallback's classes against ComfyUI's, and
the V3 execute path with its previews. Through servers (slow): ``/object_info`` of the 2024 host and of the V3
host give the same inputs, and training on the V3 host streams loss-chart previews over the websocket.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io as bytes_io
import json
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from comfy_host import ComfyServer, pack_module, pack_submodule, prepare_host
from helpers import inputs_in_v1_form
from workflow_format import API_WORKFLOWS

PREVIEW_IMAGE_WITH_METADATA = 4  # ComfyUI's protocol.BinaryEventTypes


@pytest.fixture(scope="module")
def fallback(pack_nodes):
    """``nodes/io_fallback.py`` (importable on every host: it needs nothing from ComfyUI)."""
    return importlib.import_module(f"{pack_module(pack_nodes).__name__}.nodes.io_fallback")


@pytest.fixture(scope="module")
def v3_io(pack_nodes):
    """ComfyUI's ``comfy_api.latest.io``; skips on hosts without the V3 API."""
    if not pack_submodule(pack_nodes, "nodes.host").HAS_V3_API:
        pytest.skip("this host has no V3 API: run with COMFYUI_PATH=<ComfyUI 0.3.48 or later>")
    from comfy_api.latest import io

    return io


def outputs_of(cls) -> dict:
    return {"types": [str(t) for t in cls.RETURN_TYPES], "names": list(cls.RETURN_NAMES),
            "tooltips": list(cls.OUTPUT_TOOLTIPS), "output_node": bool(cls.OUTPUT_NODE), "category": cls.CATEGORY,
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


def declare_example(io) -> type:
    """A node with every kind of input, option and hook the pack's nodes use, declared against ``io``."""
    thing = io.Custom("EXAMPLE_THING")

    class Example(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="DivergenceUnlearnTestExample", display_name="Example", category="testing",
                description="An example.",
                inputs=[
                    io.Int.Input("count", default=3, min=1, max=9, step=2, tooltip="n"),
                    io.Float.Input("scale", default=0.5, min=0.0, max=1.0, step=0.01, round=False),
                    io.String.Input("text", multiline=True, dynamic_prompts=False, default="a {}"),
                    io.String.Input("name", default="", tooltip="one line"),
                    io.Boolean.Input("flag", default=True),
                    io.Combo.Input("mode", options=["a", "b"], default="b", tooltip="a choice"),
                    thing.Input("thing", tooltip="a custom type; its name is also an output's"),
                    io.Model.Input("model", optional=True),
                ],
                outputs=[io.String.Output(display_name="text", tooltip="Some text."),
                         thing.Output(display_name="thing", tooltip="A thing."), io.Model.Output()],
                is_output_node=True,
            )

        @classmethod
        def validate_inputs(cls, count):
            return count != 5 or "5 is not allowed"

        @classmethod
        def fingerprint_inputs(cls, count, **others):
            return count * 10

        @classmethod
        def execute(cls, count, scale, text, name, flag, mode, thing, model=None):
            return io.NodeOutput(f"{count} {mode} {text.format(thing)}", thing, model, ui={"text": [name]})

    return Example


EXAMPLE_INPUTS = dict(count=3, scale=0.5, text="a {}", name="x", flag=True, mode="b", thing="circle")


# --------------------------------------------------------------------------- in-process


def test_the_pack_exports_its_nodes_the_way_the_host_loads_them(comfy, pack_nodes, fallback):
    root, nodes = pack_module(pack_nodes), pack_submodule(pack_nodes, "nodes")
    assert pack_nodes == nodes.NODE_CLASS_MAPPINGS  # the same classes, whichever way the host loaded them
    for node_id, cls in pack_nodes.items():
        assert cls.define_schema().node_id == node_id
        assert comfy.NODE_DISPLAY_NAME_MAPPINGS[node_id] == cls.define_schema().display_name
    if pack_submodule(pack_nodes, "nodes.host").HAS_V3_API:
        from comfy_api.latest import io

        assert hasattr(root, "comfy_entrypoint") and not hasattr(root, "NODE_CLASS_MAPPINGS")
        assert all(issubclass(cls, io.ComfyNode) and cls.GET_SCHEMA() for cls in pack_nodes.values())
    else:
        assert not hasattr(root, "comfy_entrypoint") and root.NODE_CLASS_MAPPINGS == pack_nodes
        assert all(issubclass(cls, fallback.ComfyNode) for cls in pack_nodes.values())


def test_a_node_declared_against_the_fallback_is_a_v1_node(fallback):
    node = declare_example(fallback)
    assert node.INPUT_TYPES() == {
        "required": {
            "count": ("INT", {"default": 3, "min": 1, "max": 9, "step": 2, "tooltip": "n"}),
            "scale": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "round": False}),
            "text": ("STRING", {"default": "a {}", "multiline": True, "dynamicPrompts": False}),
            "name": ("STRING", {"default": "", "multiline": False, "tooltip": "one line"}),
            "flag": ("BOOLEAN", {"default": True}),
            "mode": (["a", "b"], {"default": "b", "tooltip": "a choice"}),
            "thing": ("EXAMPLE_THING", {"tooltip": "a custom type; its name is also an output's"}),
        },
        "optional": {"model": ("MODEL", {})},
    }
    assert outputs_of(node) == {"types": ["STRING", "EXAMPLE_THING", "MODEL"], "names": ["text", "thing", "MODEL"],
                                "tooltips": ["Some text.", "A thing.", None], "output_node": True,
                                "category": "testing", "description": "An example."}
    out = getattr(node(), node.FUNCTION)(**EXAMPLE_INPUTS)
    assert out == {"result": ("3 b a circle", "circle", None), "ui": {"text": ["x"]}}
    # the host calls VALIDATE_INPUTS with the inputs its signature names (they skip its own range checks)
    assert "count" in inspect.getfullargspec(node.VALIDATE_INPUTS).args
    assert node.VALIDATE_INPUTS(count=5) == "5 is not allowed" and node.VALIDATE_INPUTS(count=3) is True
    assert node.IS_CHANGED(count=4, mode="a") == 40


def test_the_fallback_declares_what_comfyuis_v3_api_declares(fallback, v3_io):
    from comfy_api.internal import first_real_override

    real, ours = declare_example(v3_io), declare_example(fallback)
    assert inputs_in_v1_form(real.INPUT_TYPES()) == inputs_in_v1_form(ours.INPUT_TYPES())
    assert outputs_of(real) == outputs_of(ours)
    out = run_v3(real, **EXAMPLE_INPUTS)
    assert {"result": out.args, "ui": out.ui} == getattr(ours(), ours.FUNCTION)(**EXAMPLE_INPUTS)
    validate = first_real_override(real, "validate_inputs")
    assert validate is not None and "count" in validate.__func__.__code__.co_varnames
    assert first_real_override(real, "fingerprint_inputs")(count=4, mode="a") == ours.IS_CHANGED(count=4, mode="a")
    # every keyword the fallback accepts, ComfyUI's class accepts too, with the same default
    for name in ("Int", "Float", "String", "Boolean", "Combo"):
        theirs = inspect.signature(getattr(v3_io, name).Input.__init__).parameters
        for param in inspect.signature(getattr(fallback, name).Input.__init__).parameters.values():
            assert param.name in theirs and theirs[param.name].default == param.default, (name, param.name)
    for name in ("Schema", "NodeOutput"):
        theirs = inspect.signature(getattr(v3_io, name)).parameters
        assert set(inspect.signature(getattr(fallback, name)).parameters) <= set(theirs), name


def test_v3_execute_trains_and_shows_the_loss_chart_live_and_on_the_node(v3_io, pack_nodes, sd15_model, sd15_clip):
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
def test_object_info_gives_the_same_inputs_on_the_2024_host_and_the_v3_host(v3_io, tmp_path, monkeypatch):
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
def test_training_on_the_v3_host_streams_loss_chart_previews(v3_io, server):
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
