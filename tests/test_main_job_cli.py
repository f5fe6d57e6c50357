"""The main job's command line: options checked before ComfyUI starts, the host's packages checked, help
texts, the device choice, ComfyUI's own error messages, live progress, and the README commands CI runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image

from unlearn_demo import headless
from unlearn_demo.main_job import JobOptions, check_options, grid, main
from unlearn_demo.progress import JobProgress, phase_of, seconds_left
from unlearn_core.trainer import EraseConfig, divergence_names

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
from readme_commands import readme_commands  # noqa: E402


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("options, message", [
    (dict(divergence="kl_typo"), "--divergence: divergence = 'kl_typo' is not one of: mse, kl"),
    (dict(target_mode="anchors"), "--target-mode: target_mode = 'anchors' is not one of: anchor, "),
    (dict(steps=0), "--steps: steps = 0 is out of range: 1 .. 100000"),
    (dict(learning_rate=float("nan")), "--lr: learning_rate = nan: expected a finite number"),
    (dict(resolution=60), "--resolution 60: must be a multiple of 8"),
    (dict(concept="dog"), "--concept 'dog' is not a demo attribute"),
    (dict(ckpt="/nonexistent/model.safetensors", prompts=["a dog"]), "expected an existing .safetensors"),
    (dict(family="sdxl"), "--family 'sdxl': choose one of sd, sd_contextual, flux"),
    (dict(family="flux", ckpt="model.safetensors", prompts=["a dog"]), "--family flux runs a demo model"),
    (dict(family="sd_contextual", ckpt="model.safetensors", prompts=["a dog"]), "--family sd_contextual runs a demo"),
])
def test_every_option_is_checked_with_a_message_naming_it(options, message):
    with pytest.raises(ValueError) as info:
        check_options(JobOptions(**options))
    assert message in str(info.value)


def test_family_flux_asks_for_a_comfyui_with_flux_before_anything_starts(tmp_path, monkeypatch):
    """The bundled 2024 host has no Flux: --family flux names COMFYUI_PATH; a host whose model_base has Flux passes."""
    from unlearn_demo.headless import host_has_flux

    old = tmp_path / "old"
    (old / "comfy").mkdir(parents=True)
    (old / "main.py").write_text("")
    (old / "comfy" / "model_base.py").write_text("class BaseModel:\n    pass\n")
    monkeypatch.setenv("COMFYUI_PATH", str(old))
    assert not host_has_flux()
    with pytest.raises(ValueError, match="--family flux needs a ComfyUI that has Flux .* COMFYUI_PATH"):
        check_options(JobOptions(family="flux"))
    (old / "comfy" / "model_base.py").write_text("class BaseModel:\n    pass\n\nclass Flux(BaseModel):\n    pass\n")
    assert host_has_flux()
    check_options(JobOptions(family="flux"))


def test_the_check_accepts_every_registered_divergence_and_the_defaults():
    check_options(JobOptions())
    check_options(JobOptions(family="sd_contextual"))  # the demo whose CLIP mixes the prompt: any host
    for name in divergence_names():
        check_options(JobOptions(divergence=name))


def test_a_misspelt_option_stops_the_job_before_comfyui_starts(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--divergence", "kl_typo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --divergence: divergence = 'kl_typo' is not one of") and "Traceback" not in err
    assert not out.exists()  # the job creates its output folder only after the checks
    assert main(["--concept", "dog", "--out", str(out)]) == 2
    assert "error: --concept 'dog' is not a demo attribute" in capsys.readouterr().err


def test_help_texts_exit_0_and_show_the_real_defaults():
    demo = _python("-m", "unlearn_demo", "--help")
    assert demo.returncode == 0 and "run" in demo.stdout and "assemble" in demo.stdout
    run = _python("-m", "unlearn_demo", "run", "--help")
    assert run.returncode == 0, run.stderr
    assert f"erase_until ends it earlier (default: {EraseConfig.steps})" in " ".join(run.stdout.split())
    assert JobOptions().steps == EraseConfig.steps == 400
    assert "--quick" in run.stdout and "--cpu" in run.stdout
    cli = _python("-m", "unlearn_core", "--help")
    assert cli.returncode == 0 and cli.stdout.startswith("usage: python -m unlearn_core")


def test_the_console_script_names_itself(monkeypatch, capsys):
    from unlearn_core.cli import main as cli_main

    monkeypatch.setattr(sys, "argv", ["/venv/bin/divergence-unlearn", "--help"])
    with pytest.raises(SystemExit) as info:
        cli_main()
    assert info.value.code == 0 and capsys.readouterr().out.startswith("usage: divergence-unlearn")


def test_the_dependency_check_names_the_comfy_extra():
    """The main job checks what the README's `.[comfy]` install brings: the same names."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", r)[0] for r in extras["comfy"]}
    assert names == set(headless.BUNDLED_HOST_REQUIREMENTS)
    assert "divergence-unlearn[comfy]" in extras["test"]


def test_missing_host_packages_are_named_with_the_pip_command(monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(headless, "BUNDLED_HOST_REQUIREMENTS", ("psutil", "no-such-package-h14", "scipy"))
    with pytest.raises(headless.MissingRequirements) as info:
        headless.check_host_requirements()
    message = str(info.value)
    assert "not installed: no-such-package-h14." in message and "psutil" not in message
    assert "pip install no-such-package-h14" in message and 'pip install -e ".[comfy]"' in message


def test_comfyui_runs_on_the_gpu_when_there_is_one_and_cpu_forces_the_cpu(tmp_path):
    assert "--cpu" in headless.server_command(8188, tmp_path, cpu=True)
    gpu = headless.server_command(8188, tmp_path, cpu=False)
    assert "--cpu" not in gpu and gpu[1:] == ["main.py", "--listen", "127.0.0.1", "--port", "8188",
                                              "--output-directory", str(tmp_path)]
    assert headless.use_cpu(force_cpu=True)
    assert headless.use_cpu() == (not torch.cuda.is_available())  # no CUDA here: --cpu is passed
    server = headless.ComfyServer(tmp_path, tmp_path)
    assert server.cpu == (not torch.cuda.is_available())


def test_comfyui_rejections_and_failures_read_as_one_line_per_problem():
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"unlearn": {"class_type": "DivergenceUnlearn", "dependent_outputs": ["save"], "errors": [
                {"type": "value_not_in_list", "message": "Value not in list",
                 "details": "divergence: 'kl_typo' not in ['mse', 'kl']", "extra_info": {}}]}}}
    assert headless.rejection_text(body) == ("Prompt outputs failed validation\nnode unlearn (DivergenceUnlearn): "
                                             "Value not in list: divergence: 'kl_typo' not in ['mse', 'kl']")
    status = {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {"prompt_id": "p"}],
        ["execution_error", {"node_id": "concepts", "node_type": "DivergenceUnlearnLoadConceptSet",
                             "exception_type": "ConceptSetError", "exception_message": "line 1: no '->'\n"}]]}
    assert headless.failure_text(status) == ("node concepts (DivergenceUnlearnLoadConceptSet) failed: "
                                             "ConceptSetError: line 1: no '->'")


def test_progress_prints_phases_prompts_steps_loss_and_seconds_left():
    lines, now = [], [0.0]

    class Out:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    progress = JobProgress(prompts=2, sample_steps=15, out=Out(), clock=lambda: now[0])
    events = [(0, "executing", {"node": "unlearn"}), (1, "progress", {"node": "unlearn", "value": 10, "max": 10}),
              (1, "progress", {"node": "unlearn", "value": 60, "max": 60}),  # training's bar, read before its log
              (2, "log", {"line": "[Divergence Unlearn] step 1/60 loss -0.99 S 0.01 |grad| 1"}),
              (12, "log", {"line": "[Divergence Unlearn] step 11/60 loss -0.98 S 0.01 |grad| 1"}),
              (13, "log", {"line": "noise from another node"}),
              (20, "executing", {"node": "before0"}), (22, "progress", {"node": "before0", "value": 15, "max": 15}),
              (22, "executing", {"node": "after0"}), (24, "progress", {"node": "after0", "value": 16, "max": 16}),
              (24, "executing", {"node": "before1"}), (26, "progress", {"node": "before1", "value": 15, "max": 15})]
    for t, kind, data in events:
        now[0] = t
        progress(kind, data)
    text = "".join(lines)
    assert "[demo] erasure: started" in text and "anchor images drawn (10 sampler steps)" in text
    assert "(60 sampler steps)" not in text  # the training bar is not a second pool
    assert "erasure: step 11/60, loss -0.98, ~49 s at this pace to step 60 (erase_until usually stops sooner)" in text
    assert "noise" not in text
    assert text.count("images: started") == 1  # before and after alternate: one phase, one count
    assert "images: 1/4 drawn (prompt 1 before, 15 sampler steps), ~6 s left" in text
    assert "images: 2/4 drawn (prompt 1 after, ComfyUI's schedule ran 16 sampler steps for the 15 asked)" in text
    assert "images: 3/4 drawn (prompt 2 before, 15 sampler steps), ~2 s left" in text
    assert phase_of("after3_decode") == "images" and phase_of("negative") is None
    assert seconds_left(10.0, 2, 6) == 20.0


def test_the_demo_grid_fits_its_labels_and_divides_before_from_after():
    from unlearn_core.plot import DIVIDER_WIDTH, LABEL_WIDTH

    cell = [Image.new("RGB", (96, 96), "white")] * 2
    image = grid(["a red circle", "a blue square"], [cell, cell], [cell, cell])
    label = image.width - 4 * 96 - DIVIDER_WIDTH
    assert 40 < label < LABEL_WIDTH
    x = label + 2 * 96 + DIVIDER_WIDTH // 2
    assert image.getpixel((x, image.height - 1)) == (60, 60, 60)


def test_the_demo_checkpoint_gets_the_umasks_mode(tmp_path):
    from unlearn_demo.assemble import write_checkpoint

    old = os.umask(0o022)
    try:
        path = write_checkpoint(tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------- the README's commands in CI


def test_ci_runs_the_readmes_two_commands_verbatim():
    commands = readme_commands((ROOT / "README.md").read_text())
    assert set(commands) == {"main-job", "tests"}
    assert 'pip install -e ".[comfy]"' in commands["main-job"]
    assert "python -m unlearn_demo run" in commands["main-job"]
    assert "apt-get update" in commands["tests"] and "sudo" not in commands["tests"]
    assert commands["tests"].rstrip().endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.py main-job" in ci and "readme_commands.py tests" in ci


def test_readme_command_extraction_finds_marked_blocks_only():
    text = ("intro\n<!-- ci: a -->\n```bash\necho one \\\n && echo two\n```\n\n```bash\nnot marked\n```\n"
            "<!-- ci: b -->\n```bash\necho b\n```\n")
    assert readme_commands(text) == {"a": "echo one \\\n && echo two", "b": "echo b"}
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme_commands.py"), "main-job"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("python3 -m venv .venv")


# ----------------------------------------------------------------------- against a real ComfyUI server


@pytest.mark.slow
def test_a_graph_comfyui_refuses_raises_its_message(server):
    from helpers import ERASE_THEN_GENERATE, adapt_for_tiny

    prompt = adapt_for_tiny(json.loads(ERASE_THEN_GENERATE.read_text()))
    unlearn = next(n for n in prompt.values() if n["class_type"] == "DivergenceUnlearn")
    unlearn["inputs"]["divergence"] = "kl_typo"
    with pytest.raises(headless.ComfyError) as info:
        server.run(prompt, on_event=lambda kind, data: None)
    message = str(info.value)
    assert "kl_typo" in message
    if message.startswith("ComfyUI rejected the graph:"):  # V1 nodes: the host checks combos before running
        assert "(DivergenceUnlearn): Value not in list" in message
    else:  # V3 nodes: ComfyUI 0.3.64 checks only list-typed combos, so the node's own check answers, as clearly
        assert message.startswith("node 3 (DivergenceUnlearn) failed: ValueError: divergence = 'kl_typo' is not "
                                  "one of: mse, kl,"), message  # settings.check's message, as the CLI's and job's


@pytest.mark.slow
def test_a_failing_node_raises_its_message_and_progress_streams_while_it_runs(server):
    from helpers import ERASE_THEN_GENERATE, adapt_for_tiny

    prompt = adapt_for_tiny(json.loads(ERASE_THEN_GENERATE.read_text()))
    unlearn = next(n for n in prompt.values() if n["class_type"] == "DivergenceUnlearn")
    unlearn["inputs"].update(steps=3, seed=1414)  # not cached from other tests
    events = []
    server.run(prompt, timeout=600, on_event=lambda kind, data: events.append((kind, data)))
    kinds = {kind for kind, _ in events}
    assert {"executing", "progress", "log"} <= kinds
    steps = [d["line"] for k, d in events if k == "log" and "[Divergence Unlearn] step" in d["line"]]
    assert steps and "step 3/3 loss" in steps[-1]
    checks = [d["line"] for k, d in events if k == "log" and "[Divergence Unlearn] check at step" in d["line"]]
    assert checks and "check at step 3: every target moved at least" in checks[-1]  # the last step is a check

    concepts = next(n for n in prompt.values() if n["class_type"] == "DivergenceUnlearnLoadConceptSet")
    concepts["inputs"]["text"] = "preset: no_such_preset_h14\n"
    with pytest.raises(headless.ComfyError) as info:
        server.run(prompt, timeout=600, on_event=lambda kind, data: None)
    assert "(DivergenceUnlearnLoadConceptSet) failed:" in str(info.value)
    assert "no_such_preset_h14" in str(info.value)


@pytest.mark.slow
def test_ctrl_c_stops_the_job_and_its_comfyui_with_one_line_and_no_traceback(tmp_path):
    """Ctrl-C in a terminal reaches the job and its ComfyUI server (one process group) while the erasure trains."""
    log = tmp_path / "job.log"
    with open(log, "w") as f:
        job = subprocess.Popen([sys.executable, "-m", "unlearn_demo", "run", "--quick", "--steps", "1000",
                                "--out", str(tmp_path / "out")], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                               start_new_session=True,  # its own group, as a terminal's foreground job
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    try:
        deadline = time.monotonic() + 300
        while "erasure: step" not in log.read_text() and time.monotonic() < deadline:
            assert job.poll() is None, log.read_text()
            time.sleep(0.5)
        assert "erasure: step" in log.read_text(), "the erasure did not start within 300 s:\n" + log.read_text()
        os.killpg(job.pid, signal.SIGINT)
        assert job.wait(timeout=60) == 130
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = log.read_text()
    assert "[demo] interrupted; ComfyUI was stopped" in text and "Traceback" not in text, text
    with pytest.raises(ProcessLookupError):  # the server is gone too
        os.killpg(job.pid, 0)
    workdir = Path(re.search(r"prepared in (\S+)/ComfyUI;", text).group(1))
    assert not workdir.exists()  # the job's temporary host and checkpoint removed


def test_the_registry_icon_is_the_shipped_png():
    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["Icon"].endswith("/main/docs/icon.png")
    icon = Image.open(ROOT / "docs" / "icon.png")
    assert icon.format == "PNG" and icon.width == icon.height >= 128
