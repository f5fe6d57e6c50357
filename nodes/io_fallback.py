"""ComfyUI's V3 node API (``comfy_api.latest.io``), the part the pack's nodes use, for hosts without it.

The nodes are declared once, as V3 nodes: an ``io.ComfyNode`` with ``define_schema`` and ``execute``. On a host
with the V3 API (ComfyUI 0.3.48 and later) ``io`` is ComfyUI's own (see ``host.py``); on older hosts it is this
module, with the same names and constructor keywords. Each ``ComfyNode`` subclass here also carries the V1
attributes that older hosts read (``INPUT_TYPES``, ``RETURN_TYPES``, ``RETURN_NAMES``, ``OUTPUT_TOOLTIPS``,
``FUNCTION``, ``VALIDATE_INPUTS``, ``IS_CHANGED``, ...), rendered from its schema as ComfyUI's V3 layer renders
them (``Schema.get_v1_info``), except that a combo is written the V1 way, as its list of choices.
``tests/test_v3.py`` declares one node against both modules and checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


def _pruned(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


class Input:
    io_type = ""

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, extra_dict: dict | None = None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}

    def as_dict(self) -> dict:
        return _pruned({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                        "lazy": self.lazy}) | _pruned(self.extra_dict)

    def get_io_type(self) -> Any:
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, force_input: bool | None = None):
        super().__init__(id, display_name, optional, tooltip, lazy)
        self.default, self.force_input = default, force_input

    def as_dict(self) -> dict:
        return super().as_dict() | _pruned({"default": self.default, "forceInput": self.force_input})


class Output:
    io_type = ""

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def Custom(io_type: str) -> type:
    """A socket type by its name, with ``Input`` and ``Output`` classes (``io.Custom("ERASURE").Input("erasure")``)."""
    return type(io_type, (), {"io_type": io_type, "Input": type("Input", (Input,), {"io_type": io_type}),
                              "Output": type("Output", (Output,), {"io_type": io_type})})


Model, Clip, Vae, Latent, Image, Conditioning = map(Custom, ("MODEL", "CLIP", "VAE", "LATENT", "IMAGE",
                                                             "CONDITIONING"))


class Boolean(Custom("BOOLEAN")):
    class Input(WidgetInput):
        io_type = "BOOLEAN"


class Int(Custom("INT")):
    class Input(WidgetInput):
        io_type = "INT"

        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: int | None = None,
                     min: int | None = None, max: int | None = None, step: int | None = None,
                     force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, force_input)
            self.min, self.max, self.step = min, max, step

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step})


class Float(Custom("FLOAT")):
    class Input(WidgetInput):
        io_type = "FLOAT"

        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: float | None = None,
                     min: float | None = None, max: float | None = None, step: float | None = None,
                     round: float | None = None, force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, force_input)
            self.min, self.max, self.step, self.round = min, max, step, round

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                                "round": self.round})


class String(Custom("STRING")):
    class Input(WidgetInput):
        io_type = "STRING"

        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, multiline: bool = False,
                     default: str | None = None, dynamic_prompts: bool | None = None,
                     force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, force_input)
            self.multiline, self.dynamic_prompts = multiline, dynamic_prompts

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"multiline": self.multiline, "dynamicPrompts": self.dynamic_prompts})


class Combo(Custom("COMBO")):
    class Input(WidgetInput):
        """A dropdown; written the V1 way, its choices in place of the type name."""

        io_type = "COMBO"

        def __init__(self, id: str, options: list | None = None, display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None, lazy: bool | None = None,
                     default: Any = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default)
            self.options = options

        def get_io_type(self) -> list:
            return list(self.options)


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] | None = None
    outputs: list[Output] | None = None
    description: str = ""
    is_output_node: bool = False
    is_experimental: bool = False
    is_deprecated: bool = False


class NodeOutput:
    def __init__(self, *args: Any, ui: dict | None = None):
        self.args, self.ui = args, ui

    @property
    def result(self) -> tuple | None:
        return self.args or None


def input_types(schema: Schema) -> dict:
    """A schema's inputs as V1 ``INPUT_TYPES``: ``{"required"|"optional": {id: (type, options)}}``."""
    spec: dict[str, dict] = {"required": {}}
    for i in schema.inputs or []:
        options = i.as_dict()
        options.pop("optional", None)
        spec.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), options)
    return spec


class ComfyNode:
    """A V3 node declaration that older hosts load as a V1 node class (the attributes are set per subclass)."""

    FUNCTION = "execute_v1"
    define_schema: Callable[[], Schema]
    execute: Callable[..., NodeOutput]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        schema = cls.define_schema()
        outputs = schema.outputs or []
        cls.RETURN_TYPES = tuple(o.io_type for o in outputs)
        cls.RETURN_NAMES = tuple(o.display_name or o.io_type for o in outputs)
        cls.OUTPUT_TOOLTIPS = tuple(o.tooltip for o in outputs)
        cls.OUTPUT_IS_LIST = tuple(o.is_output_list for o in outputs)
        cls.CATEGORY, cls.DESCRIPTION, cls.OUTPUT_NODE = schema.category, schema.description, schema.is_output_node
        cls.EXPERIMENTAL, cls.DEPRECATED = schema.is_experimental, schema.is_deprecated
        if "validate_inputs" in cls.__dict__:  # the inputs its signature names skip the host's own range checks
            cls.VALIDATE_INPUTS = cls.validate_inputs
        if "fingerprint_inputs" in cls.__dict__:
            cls.IS_CHANGED = cls.fingerprint_inputs

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return input_types(cls.define_schema())  # each time: a combo's file list changes while the host runs

    def execute_v1(self, **inputs: Any) -> dict:
        out = type(self).execute(**inputs)
        return {"result": out.args, **({"ui": out.ui} if out.ui else {})}
