#!/usr/bin/env bash
# The whole study (every preset in conf/experiment/paper/unet/) on ONE machine, several runs at
# a time, then the report. Small networks leave most of a GPU idle, so running 6-8 at once on
# one GPU finishes the grid several times sooner than one after another; on a CPU use 1.
#
#   sweeps/study_parallel.sh OUT_DIR JOBS [OVERRIDE ...]
#
#   sweeps/study_parallel.sh runs/study 1                                   # here (CPU), the study's defaults
#   sweeps/study_parallel.sh runs/study_gpu 8 data.image_size=28 data.num_train=5000 trainer.max_steps=3000
#
# Every run writes OUT_DIR/<preset>/ (run.json, samples.npz, checkpoints) and its log to
# OUT_DIR/<preset>.log; a preset that fails is reported at the end and the others go on.
# The overrides apply to every preset (same data, same noise, same seeds). Then
# `python -m lightning_diff.report sweep=OUT_DIR` writes OUT_DIR/report.{md,csv,png}.
#
# Over several sittings: a preset whose run finished (OUT_DIR/<preset>/run.json, or KEEP's copy)
# is skipped, an interrupted one resumes from its checkpoint. With KEEP=DIR each finished run's
# run.json and samples.npz are copied to DIR/<preset>/ as it finishes (e.g. a folder under
# docs/results/ that is committed), and the report is made from DIR, so a grid split across
# sittings or machines still gives one report. PRESETS="paper no_skip ..." runs only those;
# REPORT=0 leaves the report out (a caller that reports several grids together).
#
# Each run gets nproc/JOBS threads (OMP_NUM_THREADS, unless set): on 2 cores, two one-thread runs
# at a time finish the study's small UNets 1.47x sooner than one two-thread run after another.
set -uo pipefail

if [ $# -lt 2 ]; then
    sed -n 2,15p "$0"
    exit 2
fi
out=$1
jobs=$2
shift 2
python=${PYTHON:-python}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

presets=${PRESETS:-$(cd "$here/conf/experiment/paper/unet" && ls *.yaml | sed 's/\.yaml$//')}
keep=${KEEP:-}
if [ -n "$keep" ]; then
    mkdir -p "$keep"
    keep=$(cd "$keep" && pwd)
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))}
started=$(date +%s)
printf '%s\n' $presets | xargs -P "$jobs" -I{} bash -c '
    if [ -f "$1/{}/run.json" ] || { [ -n "$2" ] && [ -f "$2/{}/run.json" ]; }; then
        [ -n "$2" ] && [ ! -f "$2/{}/run.json" ] && "$0" -m lightning_diff.sweep keep "$1/{}" "$2" >/dev/null
        echo "kept   {} (finished before)"
        exit 0
    fi
    start=$(date +%s)
    if "$0" -m lightning_diff.train experiment=paper/unet/{} hydra.run.dir="$1/{}" "${@:3}" >"$1/{}.log" 2>&1; then
        [ -n "$2" ] && "$0" -m lightning_diff.sweep keep "$1/{}" "$2" >/dev/null
        echo "done   {} ($(( $(date +%s) - start )) s)"
    else
        echo "FAILED {} ($(( $(date +%s) - start )) s): see $1/{}.log"; tail -3 "$1/{}.log"
    fi
' "$python" "$out" "$keep" "$@"
echo "study: $(( $(date +%s) - started )) s wall for $(printf '%s\n' $presets | wc -l) presets, $jobs at a time"
[ "${REPORT:-1}" = 0 ] || "$python" -m lightning_diff.report sweep="${keep:-$out}"
