"""The pack's nodes as V3 nodes (``comfy_api.latest``, ComfyUI 0.3.48 and later), generated from the V1 classes.

Each node has one definition, its V1 class. Its V3 class subclasses it and builds the ``io.Schema`` from the
V1 attributes (``INPUT_TYPES``, ``RETURN_TYPES``, ``RETURN_NAMES``, ``OUTPUT_TOOLTIPS``, ``CATEGORY``,
``DESCRIPTION``, ``OUTPUT_NODE``, ...) each time ComfyUI asks for it, so node ids, input names, types,
defaults, ranges and tooltips are the V1 ones, and a change to a V1 class needs no edit here. ``execute``
calls the V1 function; the IMAGE outputs (the charts) are also shown on the node as a preview.
``IS_CHANGED`` and ``VALIDATE_INPUTS`` (classmethods) become ``fingerprint_inputs`` and ``validate_inputs``.
Imported only on hosts with the V3 API (see the pack's ``__init__.py``).
"""

from __future__ import annotations

import functools
import inspect

from comfy_api.latest import ComfyExtension, io, ui

from . import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# V1 option name -> keyword of the V3 input's constructor, where they differ
RENAMED_OPTIONS = {"dynamicPrompts": "dynamic_prompts", "forceInput": "force_input", "display": "display_mode"}
# V1 flag attribute -> io.Schema field
SCHEMA_FLAGS = {"OUTPUT_NODE": "is_output_node", "INPUT_IS_LIST": "is_input_list", "DEPRECATED": "is_deprecated",
                "EXPERIMENTAL": "is_experimental", "NOT_IDEMPOTENT": "not_idempotent"}
# ComfyUI's own socket types by name ("MODEL" -> io.Model); combos and "*" are never a V1 type name here
BUILTIN_TYPES = {t.io_type: t for t in (getattr(io, name) for name in io.__all__)
                 if isinstance(t, type) and issubclass(t, io.ComfyTypeI) and t.io_type not in ("COMBO", "*")}


@functools.cache
def io_type(kind: str) -> type[io.ComfyTypeI]:
    """ComfyUI's io class for a V1 type name (``io.Model`` for "MODEL"), or ``io.Custom`` for ours (CONCEPT_SET)."""
    return BUILTIN_TYPES.get(kind) or io.Custom(kind)


def v3_input(name: str, spec: tuple, optional: bool) -> io.Input:
    """The V3 input for one V1 ``INPUT_TYPES`` entry ``(type name or combo choices, {options})``.

    Options the V3 constructor takes become its keywords; any other option is passed through as is.
    """
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list):
        make, keywords = io.Combo.Input, {"options": kind}
    else:
        make, keywords = io_type(kind).Input, {}
    accepted = set(inspect.signature(make.__init__).parameters) - {"self", "id", "optional", "extra_dict"}
    passed_through = {}
    for key, value in options.items():
        keyword = RENAMED_OPTIONS.get(key, key)
        if keyword not in accepted:
            passed_through[key] = value
        else:
            keywords[keyword] = io.NumberDisplay(value) if keyword == "display_mode" else value
    made = make(name, optional=optional, **keywords)
    made.extra_dict.update(passed_through)
    return made


def v3_schema(node_id: str, v1: type) -> io.Schema:
    """The ``io.Schema`` of a V1 node class."""
    spec = v1.INPUT_TYPES()
    names = getattr(v1, "RETURN_NAMES", None)
    tooltips = getattr(v1, "OUTPUT_TOOLTIPS", None)
    is_list = getattr(v1, "OUTPUT_IS_LIST", None)
    outputs = [io_type(kind).Output(display_name=names[i] if names else None,
                                    tooltip=tooltips[i] if tooltips else None,
                                    is_output_list=bool(is_list and is_list[i]))
               for i, kind in enumerate(v1.RETURN_TYPES)]
    return io.Schema(
        node_id=node_id, display_name=NODE_DISPLAY_NAME_MAPPINGS.get(node_id), category=v1.CATEGORY,
        description=getattr(v1, "DESCRIPTION", ""),
        inputs=[v3_input(name, entry, section == "optional")
                for section in ("required", "optional") for name, entry in spec.get(section, {}).items()],
        outputs=outputs, hidden=[io.Hidden(value) for value in spec.get("hidden", {}).values()] or None,
        **{field: bool(getattr(v1, flag)) for flag, field in SCHEMA_FLAGS.items() if hasattr(v1, flag)},
    )


def node_output(node: type[io.ComfyNode], v1: type, result) -> io.NodeOutput:
    """A V1 return value (a tuple, or ``{"ui": ..., "result": ...}``) as a NodeOutput, with the IMAGE
    outputs also shown on the node."""
    shown = dict(result.get("ui") or {}) if isinstance(result, dict) else {}
    values = tuple(result.get("result", ())) if isinstance(result, dict) else tuple(result)
    for kind, value in zip(v1.RETURN_TYPES, values):
        if kind == "IMAGE":
            shown.setdefault("images", []).extend(ui.PreviewImage(value, cls=node).values)
    return io.NodeOutput(*values, ui=shown or None)


def v3_node(node_id: str, v1: type) -> type[io.ComfyNode]:
    """The V3 node class of a V1 node class (a subclass of it, so that its methods stay callable on it)."""

    class Node(io.ComfyNode, v1):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return v3_schema(node_id, v1)

        @classmethod
        def execute(cls, **inputs) -> io.NodeOutput:
            hidden = {name: getattr(cls.hidden, io.Hidden(value).name)
                      for name, value in v1.INPUT_TYPES().get("hidden", {}).items()}
            return node_output(cls, v1, getattr(v1(), v1.FUNCTION)(**inputs, **hidden))  # cls is locked: no instance

    if hasattr(v1, "IS_CHANGED"):
        Node.fingerprint_inputs = classmethod(v1.IS_CHANGED.__func__)
    if hasattr(v1, "VALIDATE_INPUTS"):  # same signature: the inputs it names skip ComfyUI's own range checks
        Node.validate_inputs = classmethod(v1.VALIDATE_INPUTS.__func__)
    Node.__name__ = Node.__qualname__ = v1.__name__
    return Node


V3_NODES = {node_id: v3_node(node_id, v1) for node_id, v1 in NODE_CLASS_MAPPINGS.items()}


class DivergenceUnlearnExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(V3_NODES.values())


async def comfy_entrypoint() -> ComfyExtension:
    """What ComfyUI calls to load the pack as V3 nodes."""
    return DivergenceUnlearnExtension()
