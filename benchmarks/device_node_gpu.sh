#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repository root, after benchmarks/prepare_device.sh ran here:
#   device tool: run(command="bash benchmarks/device_node_gpu.sh", carry=[".device"], timeout_s=600)
# Writes the tables and raw numbers to $OUT (or benchmarks/results/ when OUT is unset).
set -euo pipefail
site="$(mktemp -d)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .device/whl/*.whl
export PYTHONPATH="$site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
out="${OUT:-benchmarks/results}"
python3 benchmarks/bench_node_gpu.py --host .device/hosts/comfyui-2024 --host .device/hosts/comfyui-current \
  --out "$out/node_gpu.md" 2>&1 | tee "$out/node_gpu.log"
