#!/usr/bin/env bash
# On the GPU machine (the device tool's `run`, carrying .whl from scripts/gpu_wheels.sh):
#   bash scripts/gpu_check.sh
# installs the wheels beside the image's CUDA torch, then runs the CUDA-gated tests and a captured benchmark of the
# tiny model on the GPU; logs and results go to $OUT (or ./gpu-check when $OUT is unset).
set -uo pipefail
out="${OUT:-gpu-check}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -rs tests/engine/test_cuda.py tests/profiling/test_gpu_idle.py \
  tests/profiling/test_utilization.py tests/profiling/test_run.py 2>&1 | tee "$out/pytest.log"
python3 -m profiling.bench sweep --config configs/tiny-cuda.yaml --concurrency 1 4 16 --requests-per-level 16 \
  --warmup 4 --max-new-tokens 60 --capture --out "$out/bench" 2>&1 | tee "$out/bench.log"
python3 -m profiling.gpu_idle "$out/bench/runs/c16-recon-0" 2>&1 | tee "$out/gpu_idle.txt"
rm -rf "$out/bench/runs"  # traces are large; the split above is what comes back
