"""One declaration of the erase settings (EraseConfig): the node, the CLI, the main job's graph, the shipped
workflows and the benchmark follow it, and a test here fails when one of them drifts."""

from __future__ import annotations

import contextlib
import json
import re

import pytest

from helpers import _bench, inputs_in_v1_form
from unlearn_core.cli import build_parser
from unlearn_demo.main_job import JobOptions, build_graph
from unlearn_core.settings import declared, defaults
from unlearn_core.trainer import EraseConfig
from workflow_format import API_WORKFLOWS, WORKFLOWS, ui_to_api

# The node's widgets before the erase-until settings, in the order saved workflows store them (positional).
SAVED_WIDGET_ORDER = ["divergence", "alpha", "sigma", "target_mode", "guidance_eta", "erase_from", "parameter_set",
                      "lora_rank", "steps", "learning_rate", "batch_size", "resolution", "x_source", "anchor_samples",
                      "sample_steps", "preservation_weight", "precision", "gradient_checkpointing", "seed"]
RECIPE = ("divergence", "target_mode", "learning_rate", "batch_size")  # the benchmarked recipe (README)
GRAPH_INPUTS = ("model", "clip", "concepts")


def test_the_defaults_are_the_benchmarked_recipe():
    config = EraseConfig()
    assert (config.divergence, config.target_mode, config.learning_rate, config.steps, config.erase_until) == (
        "hellinger", "anchor_guidance", 5e-4, 400, -1.0)  # steps is a cap: erase_until (auto) ends the run
    bench = _bench()
    plan = bench.MODES["guidance"]  # the run the README's recommendation rests on
    assert bench.DIVERGENCES["hellinger"] == {"divergence": "hellinger"}
    assert config.target_mode in plan["target_modes"] and config.learning_rate in plan["learning_rates"]


def test_new_settings_only_append_to_the_saved_widget_order():
    names = [s.name for s in declared(EraseConfig)]
    assert names[: len(SAVED_WIDGET_ORDER)] == SAVED_WIDGET_ORDER


def test_the_node_inputs_are_the_declaration(pack_nodes):
    spec = pack_nodes["DivergenceUnlearn"].INPUT_TYPES()
    names = [s.name for s in declared(EraseConfig)]
    assert list(spec["required"]) == list(GRAPH_INPUTS) + SAVED_WIDGET_ORDER
    assert list(spec["optional"]) == ["latents"] + names[len(SAVED_WIDGET_ORDER):]  # absent in older API prompts
    inputs = inputs_in_v1_form(spec)
    for s in declared(EraseConfig):
        kind, options = inputs.get(f"required/{s.name}") or inputs[f"optional/{s.name}"]
        assert options["default"] == s.default and options["tooltip"] == s.help
        assert kind == (s.choices if s.choices is not None else {int: "INT", float: "FLOAT", str: "STRING",
                                                                 bool: "BOOLEAN"}[s.kind])
        if s.auto is not None:  # the widget reaches the "auto" value below the range
            assert options["min"] == s.auto and options["max"] == s.high


def test_the_cli_offers_every_setting_with_its_default():
    args = build_parser().parse_args(["erase", "--pipeline", "p", "--concepts", "a -> b", "--out", "o.safetensors"])
    assert {s.name: getattr(args, s.name) for s in declared(EraseConfig)} == defaults(EraseConfig)
    args = build_parser().parse_args(["erase", "--pipeline", "p", "--concepts", "c", "--out", "o", "--lr", "1e-3",
                                      "--target-mode", "anchor_guidance", "--sigma", "0", "--gradient-checkpointing"])
    assert (args.learning_rate, args.target_mode, args.sigma, args.gradient_checkpointing) == (
        1e-3, "anchor_guidance", 0.0, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["erase", "--pipeline", "p", "--concepts", "c", "--out", "o", "--divergence", "kl_x"])


def _unlearn_nodes(graph: dict) -> list[dict]:
    return [n["inputs"] for n in graph.values() if n["class_type"] == "DivergenceUnlearn"]


def _check_graph_inputs(inputs: dict, where: str) -> None:
    settings = [k for k in inputs if k not in GRAPH_INPUTS]
    assert settings == [s.name for s in declared(EraseConfig)], f"{where}: settings missing, extra or out of order"
    for s in declared(EraseConfig):
        assert type(inputs[s.name]) is s.kind or (s.kind is float and type(inputs[s.name]) is int), \
            f"{where}: {s.name}={inputs[s.name]!r} is not a {s.kind.__name__}"
    drifted = {k: inputs[k] for k in RECIPE if inputs[k] != defaults(EraseConfig)[k]}
    assert not drifted, f"{where} departs from the recipe: {drifted}"


def test_the_main_job_passes_the_defaults():
    opts = JobOptions()
    assert (opts.divergence, opts.target_mode, opts.steps, opts.learning_rate) == (
        EraseConfig.divergence, EraseConfig.target_mode, EraseConfig.steps, EraseConfig.learning_rate)
    (inputs,) = _unlearn_nodes(build_graph(opts, "demo.safetensors", "a -> b\n", ["a"]))
    _check_graph_inputs(inputs, "main job")
    overrides = {k: v for k, v in inputs.items() if k not in GRAPH_INPUTS and v != defaults(EraseConfig)[k]}
    assert set(overrides) <= {"resolution", "sample_steps"}, overrides  # the 64-pixel demo's sizes


@pytest.mark.parametrize("api_file", sorted(API_WORKFLOWS.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_workflows_follow_the_declaration(api_file):
    for inputs in _unlearn_nodes(json.loads(api_file.read_text())):
        _check_graph_inputs(inputs, api_file.name)


def test_a_workflow_saved_before_the_erase_until_settings_still_queues_the_same(comfy):
    ui = json.loads((WORKFLOWS / "erase_then_generate.json").read_text())
    node = next(n for n in ui["nodes"] if n["type"] == "DivergenceUnlearn")
    appended = len(declared(EraseConfig)) - len(SAVED_WIDGET_ORDER)
    node["widgets_values"] = node["widgets_values"][:-appended]  # as saved before those widgets existed
    twin = json.loads((API_WORKFLOWS / "erase_then_generate.json").read_text())
    assert ui_to_api(ui, comfy.NODE_CLASS_MAPPINGS) == twin


COMMANDS = [["unlearn_core", "erase"], ["unlearn_core", "generate"], ["unlearn_core", "probe"], ["unlearn_core"],
            ["unlearn_demo"], ["unlearn_demo", "run"], ["unlearn_demo", "train"], ["unlearn_demo", "assemble"],
            ["unlearn_demo", "toy-pipeline"], ["unlearn_demo.train_patterns"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_prints_its_help(command):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower() and "Traceback" not in done.stderr


BAD_SETTINGS = [("guidance_eta", -0.5, "0 .. 10, or -1 (auto)"), ("lora_rank", -2, "0 .. 256, or -1 (auto)"),
                ("steps", 0, "1 .. 100000"), ("learning_rate", float("nan"), "finite number"),
                ("divergence", "kl_x", "not one of")]


@pytest.mark.parametrize(("name", "value", "says"), BAD_SETTINGS, ids=[b[0] for b in BAD_SETTINGS])
def test_a_bad_setting_fails_the_same_way_in_cli_trainer_and_main_job(name, value, says):
    from dataclasses import replace

    from unlearn_core.cli import main as cli
    from unlearn_core.settings import check
    from unlearn_demo.main_job import ERASE_FLAGS, check_options

    with pytest.raises(ValueError) as error:
        check(replace(EraseConfig(), **{name: value}))
    message = str(error.value)
    assert message.startswith(f"{name} = ") and says in message
    flag = "--" + name.replace("_", "-")
    with pytest.raises(SystemExit) if name == "divergence" else contextlib.nullcontext():  # argparse's own choices
        assert cli(["erase", "--pipeline", "missing", "--concepts", "a -> b", "--out", "o.safetensors", flag,
                    str(value)]) == 2  # refused before the (missing) pipeline is read
    if name in ERASE_FLAGS and name != "divergence":
        with pytest.raises(ValueError, match=re.escape(message)):
            check_options(replace(JobOptions(), **{name: value}))


def test_auto_values_pass_the_check():
    from dataclasses import replace

    from unlearn_core.settings import check

    check(replace(EraseConfig(), guidance_eta=-1.0, lora_rank=-1, sigma=0.0, erase_until=-1.0))


def test_the_readmes_settings_table_is_the_declaration():
    from pathlib import Path

    from unlearn_core.settings import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table(EraseConfig) + "\n\n" in readme, \
        "README's settings table differs from the declaration: paste unlearn_core.settings.markdown_table(EraseConfig)"
