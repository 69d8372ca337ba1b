#!/usr/bin/env bash
# The GPU checks in one command, sized for 8 minutes on one H100/H200 (the device tool's `run`, carrying .whl from
# scripts/gpu_wheels.sh):
#   bash scripts/gpu_check.sh
# 1. installs the wheels beside the image's CUDA torch;
# 2. the CUDA-gated tests: the engine in fp32/bf16 with both executors, CUDA graphs on vs off (the same greedy
#    codes), seeded rows batch-invariant, sync counts; the GPU idle split, NVML and a captured run on a real GPU;
# 3. per released size (1.7B-Base, then 0.6B-Base): a random checkpoint drawn on the GPU and written in bf16, then,
#    with CUDA graphs on and off, three sweeps of the prompt set (`profiling.bench sweep`, voice clone, 50-frame
#    requests): c=1 and 8 (8 requests each), c=64 (64 requests), and a captured c=8 run of 12-frame requests for the
#    GPU idle split (captures stay short: an eager 50-frame step of the 1.7B model is ~5k kernels);
# 4. summary.csv: per level TTFA p50/p99, RTF p50/p99, audio s/s, underrun p99, GPU busy and the idle split.
# Every phase is timed (timings.txt) and bounded by what is left of GPU_CHECK_BUDGET_S (450 s); one that would start
# past it is skipped and named. $OUT (or ./gpu-check) gets gpu.txt, timings.txt, pytest.log, bench.log (every
# sweep's and build's output), summary.csv and bench.tar.gz (each sweep's bench.json and bench.csv).
# GPU_CHECK_DRY=1 runs the same flow on the CPU from .venv (tiny model, float32, c=1 and 2, 4-frame requests; the
# CUDA tests skip): the proof of the script on a machine without a GPU.
set -uo pipefail
out="${OUT:-gpu-check}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if [[ -n "${GPU_CHECK_DRY:-}" ]]; then
  py=.venv/bin/python device=cpu dtype=float32 sizes=(tiny) budget="${GPU_CHECK_BUDGET_S:-1800}"
  frames=4 low=(1) low_requests=2 high=2 idle_frames=3 idle_c=2
  echo "dry run: the CPU, the tiny model" | tee "$out/gpu.txt"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
  py=python3 device=cuda dtype=bfloat16 sizes=(1.7B 0.6B) budget="${GPU_CHECK_BUDGET_S:-450}"
  frames=50 low=(1 8) low_requests=8 high=64 idle_frames=12 idle_c=8
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

phase() {  # NAME LIMIT_S CMD...: CMD bounded by LIMIT_S and the budget left; output to $work/NAME.log
  local name=$1 limit=$2 left=$((budget - SECONDS)) start=$SECONDS rc=0
  shift 2
  if ((left < 20)); then
    echo "$name: skipped, ${left} s of the budget left" | tee -a "$out/timings.txt"
    return 1
  fi
  timeout -k 10 $((limit < left ? limit : left)) "$@" >"$work/$name.log" 2>&1 || rc=$?
  printf '%-30s %4d s  rc=%-3d (%d s in all)\n' "$name" $((SECONDS - start)) "$rc" "$SECONDS" | tee -a "$out/timings.txt"
  return "$rc"
}

engine_config() {  # CHECKPOINT GRAPHS: an engine config serving it, both stages in the engine's process
  local file="$work/$(basename "$1")-graphs-$2.yaml"
  cat >"$file" <<EOF
model: $1
device: $device
dtype: $dtype
talker: {executor: uni, max_num_seqs: $high, max_model_len: 2048}
code2wav: {executor: uni, max_num_seqs: 16}
chunking: {first_chunk_frames: 2, chunk_frames: 12}
decode: {cuda_graphs: $2}
EOF
  echo "$file"
}

sweep() {  # NAME CONFIG FRAMES REQUESTS C... [--capture]: one `profiling.bench sweep` into $work/NAME
  local name=$1 config=$2 n_frames=$3 requests=$4
  shift 4
  phase "$name" 120 "$py" -m profiling.bench sweep --config "$config" --label "$name" --out "$work/$name" \
    --max-new-tokens $((n_frames + 1)) --requests-per-level "$requests" --warmup 2 --concurrency "$@"
  rm -rf "$work/$name/runs"  # a capture's traces: the idle split is in bench.json
  swept+=("$name")
}

swept=()
# two phases, so that one's conftest failing to import (tests/profiling/conftest.py needs the server's packages)
# leaves the other's results
phase tests-engine "${GPU_CHECK_TESTS_S:-180}" "$py" -m pytest -p no:cacheprovider -o addopts= -v -rs --durations=10 \
  tests/engine/test_cuda.py
phase tests-profiling 90 "$py" -m pytest -p no:cacheprovider -o addopts= -v -rs \
  tests/profiling/test_gpu_idle.py::test_a_real_cuda_capture_splits_eager_launches_and_a_graph_replay \
  tests/profiling/test_utilization.py::test_a_real_gpu_is_sampled_through_nvml_while_it_works \
  tests/profiling/test_run.py::test_a_captured_cuda_run_splits_gpu_idle_per_stage
cat "$work"/tests-*.log >"$out/pytest.log" 2>/dev/null && tail -n 40 "$out/pytest.log"

# GPU_CHECK_SIZES / GPU_CHECK_GRAPHS narrow the sweeps (a rerun of what an earlier check missed);
# GPU_CHECK_IDLE=0 leaves the captured idle-split sweeps out
read -ra sizes <<<"${GPU_CHECK_SIZES:-${sizes[*]}}"
read -ra graph_modes <<<"${GPU_CHECK_GRAPHS:-true false}"
for size in "${sizes[@]}"; do
  checkpoint="$work/$size-base"
  phase "build-$size" 150 "$py" -m profiling.bench.checkpoint "$checkpoint" --task base --size "$size" \
    --device "$device" --dtype "$dtype" || continue
  for graphs in "${graph_modes[@]}"; do
    config=$(engine_config "$checkpoint" "$graphs")
    sweep "$size-graphs-$graphs" "$config" "$frames" "$low_requests" "${low[@]}"
    sweep "$size-graphs-$graphs-c$high" "$config" "$frames" "$high" "$high"
    [[ ${GPU_CHECK_IDLE:-1} == 0 ]] ||
      sweep "$size-graphs-$graphs-idle" "$config" "$idle_frames" "$idle_c" "$idle_c" --capture
  done
  rm -rf "$checkpoint"
done

for log in "$work"/*.log; do
  [[ $log == */tests-*.log ]] || { echo "===== $(basename "$log")" && cat "$log"; }
done >"$out/bench.log"
(cd "$work" && tar -czf - --ignore-failed-read ./*/bench.json ./*/bench.csv) >"$out/bench.tar.gz"
"$py" - "$work" "${swept[@]}" <<'EOF' | tee "$out/summary.csv"
"""One row per level of every sweep, in run order: the figures the GPU check is for."""
import csv
import sys
from pathlib import Path

COLUMNS = ["series", "concurrency", "requests", "errors", "audio_s_per_s", "ttfa_s_p50", "ttfa_s_p99", "rtf_p50",
           "rtf_p99", "underrun_s_p99", "gpu_busy_percent", "gpu_busy_ms", "gpu_waiting_for_host_ms",
           "launch_latency_ms", "host_waiting_for_kernel_ms"]
writer = csv.writer(sys.stdout)
writer.writerow(COLUMNS)
for name in sys.argv[2:]:
    path = Path(sys.argv[1]) / name / "bench.csv"
    for row in csv.DictReader(path.open()) if path.exists() else []:
        writer.writerow([row["series"], *(f"{float(row[column]):.4g}" for column in COLUMNS[1:])])
EOF
echo "timings:" && cat "$out/timings.txt"
