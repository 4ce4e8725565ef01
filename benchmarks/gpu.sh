#!/usr/bin/env bash
# The GPU-relevant benchmarks on one CUDA GPU, one combined table: trainer overhead (fp32,
# channels_last, bf16 autocast, torch.compile as rows), per-level training (loop vs stacked),
# exact NN search (achieved TFLOP/s against this card's measured float32 matmul rate), FID
# embedding throughput, the equivariant local score machine at 3x32x32, N = 50,000 against the
# straightforward per-pixel machine, and the exact LS and ELS at full dataset size with their
# peak GPU memory (3x32x32, N = 50,000; Fashion-MNIST, 60,000 images at 28x28, 20 levels).
# Without the last two the table took about 5 minutes on an H100; they have not run on a GPU yet.
#
#   benchmarks/gpu.sh                          # all of them on the GPU
#   benchmarks/gpu.sh local_score_scale        # some of them (benchmark names)
#   benchmarks/gpu.sh --device cpu [NAME ...]  # the same code at tiny sizes on the CPU (a smoke test)
#
# JSON goes into $OUT (if set) or benchmarks/results/gpu. Needs no network: the repository checked
# out and a Python with the package's dependencies ($PYTHON, else .venv/bin/python, else python3).
# FID weights come from $LIGHTNING_DIFF_CACHE as the package finds them; without them that row
# measures the architecture and says so. Fashion-MNIST comes from Debian's dataset-fashion-mnist,
# or from $FASHION_MNIST_ROOT (a folder holding FashionMNIST/raw/ with the four IDX .gz files);
# without either its rows say so.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
size=gpu
if [[ "${1:-}" == "--device" ]]; then
    device=${2:?--device needs cpu or cuda}
    shift 2
fi
if [[ "$device" == "cpu" ]]; then
    size=tiny
fi
python=${PYTHON:-.venv/bin/python}
[[ -x "$python" ]] || python=python3
out=${OUT:-benchmarks/results/gpu}
# The compiled trainer variant goes last: compilation is the slowest part of the run.
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
    names=(per_level_training nn_search fid_embedding local_score_scale local_score trainer_overhead)
fi
settings=()
if [[ -n "${FASHION_MNIST_ROOT:-}" && " ${names[*]} " == *" local_score_scale "* ]]; then
    settings=(--set "fashion_root=$FASHION_MNIST_ROOT")
fi

if [[ "$device" == "cuda" ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
fi
exec "$python" -m benchmarks "${names[@]}" --device "$device" --size "$size" --out "$out" ${settings[@]+"${settings[@]}"}
