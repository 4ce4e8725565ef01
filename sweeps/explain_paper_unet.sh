#!/usr/bin/env bash
# What explains a converged paper UNet (issue 14; docs/results.md, "Explaining the paper UNet").
# Digits at 16x16, N = 500, base width 16, 2,000 steps (the issue's network), a second seed as
# the control, the calibrated local score machines (ELS and LS, zero padding like the UNet),
# Lukoianov et al.'s pca_locality and the baselines (linear, empirical, nearest), all sampled
# from the same 64 seeds; then the report with its explanation columns. About 25 minutes on
# two CPU cores. Resumable: a finished step (its run.json or calibration.json) is skipped.
#
#   sweeps/explain_paper_unet.sh [OUT_DIR]        # default runs/explain_paper_unet
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/explain_paper_unet}
python=${PYTHON:-.venv/bin/python}
common=(data=digits data.image_size=16 data.num_train=500 logger=none trainer.enable_progress_bar=false)
unet=(experiment=paper/unet/paper unet_width=16 trainer.max_steps=2000 trainer.val_check_interval=1000
      callbacks.checkpoint_every_n_steps=500 callbacks.measure.every_n_steps=2000)

train() {  # train NAME OVERRIDES...: one run into $out/NAME unless it finished before
    local name=$1
    shift
    [[ -f "$out/$name/run.json" ]] && return
    echo "== $name"
    "$python" -m lightning_diff.train "${common[@]}" hydra.run.dir="$out/$name" "$@"
}

calibrated() {  # calibrated MACHINE: its calibrated knob and the calibration seeds' record, one override a line
    tr ' ' '\n' < "$out/calibration_$1/overrides.txt" | grep -E '^(denoiser\.(patch_sizes|threshold)|calibrated_on)='
}

train paper "${unet[@]}"
# The control: another training seed on the same images (data.seed), sampled from seed 0's noise.
train paper_seed1 "${unet[@]}" variant=paper_seed1 seed=1 data.seed=0
if [[ ! -f "$out/paper_seed1/samples_seed1.npz" ]]; then
    mv "$out/paper_seed1/samples.npz" "$out/paper_seed1/samples_seed1.npz"
    "$python" -m lightning_diff.sample ckpt="$out/paper_seed1/checkpoints/last.ckpt" seed=0 num_samples=64 \
        out="$out/paper_seed1/samples.npz" progress=false
fi
for machine in els:true ls:false; do
    name=${machine%%:*}
    equivariant=${machine##*:}
    if [[ ! -f "$out/calibration_$name/calibration.json" ]]; then
        "$python" -m lightning_diff.calibrate ref="$out/paper" equivariant="$equivariant" padding=zeros \
            candidates=[1,3,5,7,9,11,13,15,19,23,31] num_samples=64 out="$out/calibration_$name"
    fi
    mapfile -t overrides < <(calibrated "$name")
    train "$name" experiment=paper/unet/"$name" "${overrides[@]}"
done
for family in pca_locality linear empirical nearest; do
    train "$family" experiment=paper/unet/"$family"
done
for other in paper_seed1 els ls pca_locality linear empirical nearest; do
    "$python" -m lightning_diff.compare a="$out/paper" b="$out/$other" out="$out/compare/$other.json" > /dev/null
done
"$python" -m lightning_diff.report sweep="$out" out="$out/report" reference=paper
