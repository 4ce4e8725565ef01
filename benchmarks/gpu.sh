#!/usr/bin/env bash
# The GPU-relevant benchmarks on one CUDA GPU, one combined table (about 5 minutes on an H100):
# trainer overhead (fp32, channels_last, bf16 autocast, torch.compile as rows), per-level
# training (loop vs stacked), exact NN search (achieved TFLOP/s against this card's measured
# float32 matmul rate), FID embedding throughput and the equivariant local score machine at
# 3x32x32, N = 50,000 against the straightforward per-pixel machine.
#
#   benchmarks/gpu.sh                # on the GPU; JSON into $OUT (if set) or benchmarks/results/gpu
#   benchmarks/gpu.sh --device cpu   # the same code at tiny sizes on the CPU (a smoke test)
#
# Needs no network: the repository checked out and a Python with the package's dependencies
# ($PYTHON, else .venv/bin/python, else python3). FID weights come from $LIGHTNING_DIFF_CACHE
# as the package finds them; without them that row measures the architecture and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
size=gpu
if [[ "${1:-}" == "--device" ]]; then
    device=${2:?--device needs cpu or cuda}
fi
if [[ "$device" == "cpu" ]]; then
    size=tiny
fi
python=${PYTHON:-.venv/bin/python}
[[ -x "$python" ]] || python=python3
out=${OUT:-benchmarks/results/gpu}

if [[ "$device" == "cuda" ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
fi
# The compiled trainer variant goes last: compilation is the slowest part of the run.
exec "$python" -m benchmarks per_level_training nn_search fid_embedding local_score trainer_overhead \
    --device "$device" --size "$size" --out "$out"
