#!/usr/bin/env bash
# The converged, controlled study (sweeps/study_converged.sh: every preset on both halves, the
# paper UNet with 3 seeds, calibrated machines, the N sweep, the reports) at the paper's RGB
# sizes on one GPU: CIFAR-10 at 32x32 or CelebA at 64x64, the paper's base width 32,
# 10,000 training images (each half-model sees 5,000), batch 64, 20,000 steps validated every
# 2,500, 8 runs at a time on the one GPU (small per-level UNets leave most of it idle).
#
#   sweeps/study_gpu.sh 32 DATA_ROOT [OVERRIDE ...]   # CIFAR-10 from DATA_ROOT/cifar-10-batches-py
#   sweeps/study_gpu.sh 64 DATA_ROOT [OVERRIDE ...]   # CelebA from DATA_ROOT/celeba
#   sbatch --gpus-per-node=1 --cpus-per-task=16 --time=24:00:00 --wrap "sweeps/study_gpu.sh 64 DATA_ROOT"
#
# Outputs: runs/study_gpu<size>/ (checkpoints) and docs/results/study_gpu<size>/ (the kept
# summaries and both reports; commit them). Resumable like study_converged.sh. Whether 20,000
# steps converge is the report's convergence column to say: if a row fails it, rerun with a
# larger trainer.max_steps into a new OUT_DIR (the cosine schedule is tied to max_steps).
# The grid as a SLURM array instead: docs/experiments.md, "The study on GPUs".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ] || { [ "$1" != 32 ] && [ "$1" != 64 ]; }; then
    sed -n 2,16p "$0"
    exit 2
fi
size=$1
root=$2
shift 2
if [ "$size" = 32 ]; then
    data=(data=cifar10 data.image_size=32)
    sizes="1000 50000"
else
    data=(data=celeba data.image_size=64)
    sizes="1000 100000"
fi
export STREAMS=${STREAMS:-8} SIZES=${SIZES:-$sizes}
exec sweeps/study_converged.sh "runs/study_gpu$size" "docs/results/study_gpu$size" \
    "${data[@]}" data.root="$root" data.num_train=10000 data.batch_size=64 unet_width=32 \
    trainer.accelerator=gpu trainer.max_steps=20000 trainer.val_check_interval=2500 \
    callbacks.checkpoint_every_n_steps=2500 lr_schedule.warmup_steps=500 \
    trainer.enable_progress_bar=false "$@"
