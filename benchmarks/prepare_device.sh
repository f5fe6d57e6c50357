#!/usr/bin/env bash
# Run HERE (the machine with this checkout), once, before benchmarks/device_node_gpu.sh runs on the GPU
# machine: puts the two ComfyUI hosts and the wheels the GPU machine lacks into .device/ (git-ignored;
# the device tool carries it). The GPU machine has torch 2.11 and no network. See benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> "$(git rev-parse --git-path info/exclude)"
rm -rf .device && mkdir -p .device/hosts .device/whl
# the code each host runs in-process for SD1.5/SDXL, without its tests, web frontend, images, git history,
# API nodes and other models' tokenizers (the tree and the wheels must stay under the tool's 64 MiB)
python - <<'PY'
import os, shutil
from unlearn_demo.headless import host_source
common = shutil.ignore_patterns(".git", "__pycache__", "tests*", "web", ".github", "script_examples", "notebooks",
                                "*.png", "comfy_api_nodes")
def skip(folder, names):
    other_tokenizers = {n for n in names if n.endswith("_tokenizer")} if folder.endswith("text_encoders") else set()
    return set(common(folder, names)) | other_tokenizers
os.environ.pop("COMFYUI_PATH", None)
shutil.copytree(host_source(), ".device/hosts/comfyui-2024", ignore=skip)
current = os.environ.get("CURRENT_COMFYUI")
if not current:
    raise SystemExit("set CURRENT_COMFYUI to a checkout of the current ComfyUI (the second host to benchmark)")
shutil.copytree(current, ".device/hosts/comfyui-current", ignore=skip)
PY
# what the two hosts import and the GPU machine's image does not hold (its package list: KINDS.md)
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .device/whl \
  torchsde==0.2.6 trampoline==0.1.2 av==15.1.0 pydantic==2.11.9 pydantic-core==2.33.2 pydantic-settings==2.10.1 \
  python-dotenv==1.1.1 annotated-types==0.7.0 typing-inspection==0.4.1
du -sh .device
