"""ComfyUI workflow formats: the frontend's UI format (what "Save" writes) and the API format.

``ui_to_api`` follows the frontend's rules: widget inputs (INT, FLOAT, STRING, BOOLEAN, combos) take
``widgets_values`` in the order ``INPUT_TYPES`` lists them, an INT named ``seed``/``noise_seed`` (or
with ``control_after_generate``) is followed by its "fixed"/"randomize" control value, widgets added
after the file was saved take their defaults, and every other input is a slot fed by a link. The tests use it to check each UI workflow against its API twin
and against the node definitions of the running host.

``api_to_ui`` writes the UI files from the API ones: ``python tests/workflow_format.py`` regenerates
``workflows/<name>.json`` from ``workflows/api/<name>.json`` (it imports the host through the test
harness for the node definitions; the Flux workflow needs a host with Flux's nodes, ``COMFYUI_PATH``, and is
left as it is on one without). The UI files sit at the top of ``workflows/``, where ComfyUI's template
browser lists them; the API twins are in ``api/``, which it does not look into.
"""

from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
API_WORKFLOWS = WORKFLOWS / "api"
# Nodes that only hosts from mid-2024 on have (Flux's): a workflow using them is skipped on the bundled 2024 host
NEWER_HOST_NODES = {"FluxGuidance", "EmptySD3LatentImage"}


def newer_host_nodes_missing(prompt: dict, node_names) -> list[str]:
    """The nodes of NEWER_HOST_NODES that the API ``prompt`` uses and the host (its node names) lacks."""
    return sorted({n["class_type"] for n in prompt.values()} & NEWER_HOST_NODES - set(node_names))


def input_spec(value: tuple) -> tuple[object, dict]:
    """(type name or combo choices, options) of an ``INPUT_TYPES`` entry; V3 nodes write a combo as
    ``("COMBO", {"options": choices, ...})``, V1 nodes as ``(choices, {...})``."""
    kind, options = value[0], (value[1] if len(value) > 1 else {})
    return (options["options"], options) if kind == "COMBO" else (kind, options)


def _inputs(node_cls) -> list[tuple[str, object, dict]]:
    spec = node_cls.INPUT_TYPES()
    return [(name, *input_spec(value)) for section in ("required", "optional")
            for name, value in spec.get(section, {}).items()]


def _is_widget(kind, options: dict) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def _has_control(name: str, kind, options: dict) -> bool:
    return kind == "INT" and (name in ("seed", "noise_seed") or bool(options.get("control_after_generate")))


def ui_to_api(ui: dict, classes: dict) -> dict:
    """The API prompt the frontend would queue for a UI-format workflow."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        values = list(node.get("widgets_values", []))
        linked = {slot["name"]: slot["link"] for slot in node.get("inputs", []) if slot.get("link") is not None}
        inputs = {}
        for name, kind, options in _inputs(classes[node["type"]]):
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
            elif _is_widget(kind, options):
                inputs[name] = values.pop(0) if values else options.get("default")  # saved before it existed
                if _has_control(name, kind, options) and values:
                    values.pop(0)
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}) has {len(values)} widget values too many")
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt


def api_to_ui(prompt: dict, classes: dict) -> dict:
    """A UI-format workflow (version 0.4) for an API prompt, laid out in columns by graph depth."""
    depth: dict[str, int] = {}

    def level(nid: str) -> int:
        if nid not in depth:
            parents = [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((level(p) for p in parents), default=-1)
        return depth[nid]

    links, nodes, rows = [], [], {}
    outputs: dict[tuple[str, int], list[int]] = {}
    for order, (nid, entry) in enumerate(sorted(prompt.items(), key=lambda kv: int(kv[0]))):
        cls = classes[entry["class_type"]]
        col = level(nid)
        row = rows.get(col, 0)
        rows[col] = row + 1
        widgets, slots = [], []
        for name, kind, options in _inputs(cls):
            value = entry["inputs"].get(name)
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and str(value[0]) in prompt:
                link_id = len(links) + 1
                src = prompt[str(value[0])]
                links.append([link_id, int(value[0]), value[1], int(nid), len(slots),
                              classes[src["class_type"]].RETURN_TYPES[value[1]]])
                outputs.setdefault((str(value[0]), value[1]), []).append(link_id)
                slots.append({"name": name, "type": kind if isinstance(kind, str) else "COMBO", "link": link_id})
            elif _is_widget(kind, options):
                widgets.append(value)
                if _has_control(name, kind, options):
                    widgets.append("fixed")
            elif not isinstance(kind, list):
                slots.append({"name": name, "type": kind, "link": None})
        node = {"id": int(nid), "type": entry["class_type"], "pos": [40 + 380 * col, 40 + 300 * row],
                "size": [340, 120 + 26 * len(widgets)], "flags": {}, "order": order, "mode": 0,
                "inputs": slots, "outputs": [], "properties": {"Node name for S&R": entry["class_type"]},
                "widgets_values": widgets}
        if "_meta" in entry:
            node["title"] = entry["_meta"]["title"]
        nodes.append(node)
    for node in nodes:
        cls = classes[node["type"]]
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        node["outputs"] = [{"name": names[i], "type": t, "links": outputs.get((str(node["id"]), i), []),
                            "slot_index": i} for i, t in enumerate(cls.RETURN_TYPES)]
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
            "version": 0.4}


def main() -> None:
    import tempfile

    from comfy_host import load_inprocess, prepare_host

    nodes = load_inprocess(prepare_host(Path(tempfile.mkdtemp())))
    for api_file in sorted(API_WORKFLOWS.glob("*.json")):
        prompt = json.loads(api_file.read_text())
        if newer_host_nodes_missing(prompt, nodes.NODE_CLASS_MAPPINGS):
            print("kept", api_file.name, "(this host lacks its nodes)")
            continue
        ui = api_to_ui(prompt, nodes.NODE_CLASS_MAPPINGS)
        target = WORKFLOWS / api_file.name
        target.write_text(json.dumps(ui, indent=1) + "\n")
        print("wrote", target)


if __name__ == "__main__":
    main()
