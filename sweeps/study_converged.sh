#!/usr/bin/env bash
# The converged, controlled study (issue 15; docs/results.md): every preset of
# conf/experiment/paper/unet/ on both disjoint halves of the data, the paper UNet with two more
# training seeds (the seed-to-seed floor), the local score machines calibrated against the paper
# UNet, the paper UNet at other training-set sizes (the memorization transition), then one report
# of the grid and one of the sizes. The study's defaults (conf/experiment/paper/unet_study.yaml)
# are the CPU size that converges; overrides after the two folders change every run alike.
#
#   sweeps/study_converged.sh [OUT_DIR [KEEP_DIR [OVERRIDE ...]]]
#   sweeps/study_converged.sh                          # runs/study_converged, docs/results/study_converged
#   SIZES="1000 100000" sweeps/study_converged.sh runs/gpu docs/results/study_gpu data=celeba data.root=DATA \
#       data.image_size=64 unet_width=32 ...          # see docs/experiments.md, "The study on a GPU"
#
# Resumable: a run whose run.json exists (in OUT_DIR, or copied to KEEP_DIR) is skipped, an
# interrupted one resumes from its checkpoint, so the grid may take several sittings. KEEP_DIR
# (committed) receives each finished run's run.json and samples.npz as it finishes; the reports
# are made from it: KEEP_DIR/grid/report.* (every run), KEEP_DIR/grid/half_a_report/ (the half_a
# runs with the figures) and KEEP_DIR/dataset_size/report.*.
#
# The training images of each half are measured as samples (evaluate training_images=N, N =
# REFERENCE_IMAGES, 256 like the study's samples) into KEEP_DIR/grid/<half>/data: the report's
# data row, judged "data". Every trained change of the paper UNet is also trained with a second seed on half_a's images
# (the floor's), so the report reads it against the paper UNet across training seeds only.
#
# A trained run whose validation loss still fell >= 2% over its last quarter (at some level) is
# trained again with twice the steps (and intervals) and replaces its kept summary (marked
# trained_longer), once; one still improving after that, with four times those steps (8x the
# grid's; marked trained_8x), once. A run with a level that rose >= 2% is overfitting: the report
# says so, and more steps would make it worse, so it is not retrained.
#
# Two runs at a time, one thread each (STREAMS=2 by default): on 2 cores that is 1.47x the
# throughput of one two-thread run. SIZES: the other training-set sizes of the N sweep (the
# grid's own data.num_train is the third). CANDIDATES: the patch sizes calibration tries. GRID:
# the presets of the grid (default: all; paper, els and ls are always run). TOLERANCE: the
# convergence criterion's largest last-quarter fall (0.02).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/study_converged}
keep=${2:-docs/results/study_converged}
shift $(( $# < 2 ? $# : 2 ))
user=("$@")  # first, so the grid's own overrides below (half, seed, N) win
python=${PYTHON:-.venv/bin/python}
streams=${STREAMS:-2}
sizes=${SIZES:-"200 20000"}
candidates=${CANDIDATES:-"[1,3,5,7,9,11,13,15,19,23,31]"}
tolerance=${TOLERANCE:-0.02}
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc reports OMP_NUM_THREADS when it is set
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / streams > 0 ? cores / streams : 1 ))}
export PYTHON=$python REPORT=0
mkdir -p "$out" "$keep"
started=$(date +%s)
echo "$(date -u +%FT%TZ) sitting started" >> "$keep/wall_time.log"
# A sitting that is stopped (Ctrl-C, kill, the end of a session) still records its wall time.
trap 'echo "$(date -u +%FT%TZ) sitting stopped: $(( $(date +%s) - started )) s wall" >> "$keep/wall_time.log"; exit 130' INT TERM
machines="els ls"
every=${GRID:-$(cd conf/experiment/paper/unet && ls *.yaml | sed 's/\.yaml$//')}
rest=$(printf '%s\n' $every | grep -vxF -e paper -e els -e ls | tr '\n' ' ')

# The grid's two halves live in KEEP_DIR/grid/<half>/<preset>/.
per_half=$(( streams / 2 > 0 ? streams / 2 : 1 ))
run_halves() {  # run_halves PRESETS [OVERRIDE ...]: the presets on both halves, STREAMS runs at a time
    local presets=$1
    shift
    for half in half_a half_b; do
        KEEP="$keep/grid/$half" PRESETS="$presets" sweeps/study_parallel.sh "$out/grid/$half" "$per_half" \
            "${user[@]}" "$@" data.split=$half &
        [ "$streams" -ge 2 ] || wait
    done
    wait
}

calibrated() {  # calibrated MACHINE: its calibrated knob and the calibration seeds' record, one override a line
    tr ' ' '\n' < "$keep/calibration_$1/overrides.txt" | grep -E '^(denoiser\.(patch_sizes|threshold)|calibrated_on)='
}

echo "== the paper UNet on both halves"
run_halves paper

echo "== the training images' own scores (the report's data row), against the same held-out images"
for half in half_a half_b; do
    if [ ! -f "$keep/grid/$half/data/run.json" ]; then
        "$python" -m lightning_diff.evaluate training_images="${REFERENCE_IMAGES:-256}" data_of="$keep/grid/$half/paper" \
            as_run="$keep/grid/$half/data" progress=false >/dev/null || { echo "the data row of $half failed" >&2; exit 1; }
    fi
done

echo "== calibrating the local score machines against the paper UNet (half_a)"
reference="$out/grid/half_a/paper"
for machine in els:true ls:false; do
    name=${machine%%:*}
    if [ ! -f "$keep/calibration_$name/calibration.json" ]; then
        if [ ! -f "$reference/checkpoints/last.ckpt" ]; then
            echo "calibration needs the paper UNet's checkpoint ($reference); rerun where it was trained" >&2
            exit 1
        fi
        "$python" -m lightning_diff.calibrate ref="$reference" equivariant="${machine##*:}" padding=zeros \
            candidates="$candidates" num_samples=64 out="$keep/calibration_$name" >/dev/null &
        [ "$streams" -ge 2 ] || wait
    fi
done
wait
for name in $machines; do
    [ -f "$keep/calibration_$name/calibration.json" ] || { echo "calibration of $name failed" >&2; exit 1; }
done

echo "== every other preset on both halves"
run_halves "$rest"
echo "== the machines with their calibrated patch sizes"
for name in $machines; do
    mapfile -t overrides < <(calibrated "$name")
    run_halves "$name" "${overrides[@]}"
done

echo "== every trained change with a second training seed on half_a's images, sampled from seed 0's noise"
# The report compares each variant with the paper UNet only across training seeds (this run
# against seeds 0 and 2 of the paper UNet, the seed-0 run against seeds 1 and 2).
second=$("$python" -m lightning_diff.sweep trained $rest | tr '\n' ' ')
if [ -n "${second// /}" ]; then  # an empty PRESETS would mean every preset
    KEEP="$keep/grid/seed1" PRESETS="$second" sweeps/study_parallel.sh "$out/grid/seed1" "$streams" \
        "${user[@]}" data.split=half_a seed=1 data.seed=0 sample_seed=0
fi

echo "== the seed-to-seed control: the paper UNet with training seeds 1 and 2 on half_a's images, sampled from seed 0's noise"
for seed in 1 2; do
    KEEP="$keep/grid/controls_$seed" PRESETS=paper sweeps/study_parallel.sh "$out/grid/controls_$seed" 1 \
        "${user[@]}" data.split=half_a variant=paper_seed$seed seed=$seed data.seed=0 sample_seed=0 &
    [ "$streams" -ge 2 ] || wait
done
wait

echo "== the paper UNet and the empirical denoiser at other training-set sizes: $sizes"
copy_grid_size() {  # the grid's own size joins the N sweep as kept there (again after a retrain)
    local half preset
    for half in half_a half_b; do
        for preset in paper empirical; do
            if [ -f "$keep/grid/$half/$preset/run.json" ] &&
                ! cmp -s "$keep/grid/$half/$preset/run.json" "$keep/dataset_size/grid/$half/$preset/run.json"; then
                "$python" -m lightning_diff.sweep keep "$keep/grid/$half/$preset" "$keep/dataset_size/grid/$half" >/dev/null
            fi
        done
    done
}
copy_grid_size
for size in $sizes; do
    for half in half_a half_b; do
        KEEP="$keep/dataset_size/n_$size/$half" PRESETS="paper empirical" sweeps/study_parallel.sh \
            "$out/dataset_size/n_$size/$half" 1 "${user[@]}" data.split=$half data.num_train=$size &
        [ "$streams" -ge 2 ] || wait
    done
    wait
done

longer() {  # longer KEPT_RUN_DIR FACTOR RUN_DIR MARK: retrain it with FACTOR times its steps in RUN_DIR and keep that in its place
    local kept=$1 factor=$2 run=$3 mark=$4 start
    mapfile -t overrides < <("$python" -m lightning_diff.sweep longer "$kept" --factor "$factor")
    mkdir -p "$(dirname "$run")"
    start=$(date +%s)
    if "$python" -m lightning_diff.train "${overrides[@]}" hydra.run.dir="$run" >"$run.log" 2>&1 &&
        "$python" -m lightning_diff.sweep keep "$run" "$(dirname "$kept")" >/dev/null; then
        touch "$kept/$mark"
        echo "done   ${kept#"$keep"/}, ${overrides[*]: -3} ($(( $(date +%s) - start )) s)"
    else
        echo "FAILED ${kept#"$keep"/}: see $run.log"
    fi
}
retrain_still_improving() {  # PART FACTOR RUNS MARK [AFTER]: each kept run of PART (grid, dataset_size) still
    # improving, not yet marked MARK (and marked AFTER), retrained under $out/RUNS
    local part=$1 factor=$2 runs=$3 mark=$4 after=${5:-} running=0
    for kept in $("$python" -m lightning_diff.sweep unconverged "$keep/$part" --tolerance "$tolerance"); do
        [ -f "$kept/$mark" ] && continue  # retrained at this factor before: the next phase or the report takes it
        [[ $kept == "$keep/dataset_size/grid/"* ]] && continue  # a copy of the grid's run, retrained there
        [ -z "$after" ] || [ -f "$kept/$after" ] || continue
        longer "$kept" "$factor" "$out/$runs/${kept#"$keep/$part"/}" "$mark" &
        running=$(( running + 1 ))
        if [ "$running" -ge "$streams" ]; then
            wait -n
            running=$(( running - 1 ))
        fi
    done
    wait
}
for part in grid dataset_size; do
    echo "== twice the steps for each trained run of $part still improving (once per run)"
    retrain_still_improving $part 2 ${part}_longer trained_longer
    echo "== four times that (8x the first steps) for each still improving after it (once per run)"
    retrain_still_improving $part 4 ${part}_longer4 trained_8x trained_longer
done
copy_grid_size

echo "study: $(( $(date +%s) - started )) s wall this sitting"
echo "$(date -u +%FT%TZ) sitting finished: $(( $(date +%s) - started )) s wall, $cores cores, STREAMS=$streams" >> "$keep/wall_time.log"
# The study's wall time is the sum of its sittings (each line above: "... sitting stopped|finished: N s wall").
awk '/sitting (stopped|finished):/ { for (i = 2; i < NF; i++) if ($(i + 1) == "s" && $(i + 2) ~ /^wall/) total += $i }
     END { printf "all sittings: %d s wall\n", total }' "$keep/wall_time.log" | tee -a "$keep/wall_time.log"
controls=(reference=paper controls=[paper_seed1,paper_seed2])
reports_started=$(date +%s)
"$python" -m lightning_diff.report sweep="$keep/grid" "${controls[@]}" figure=false  # every run, both halves
"$python" -m lightning_diff.report sweep="$keep/grid" "${controls[@]}" show_split=half_a out="$keep/grid/half_a_report"
"$python" -m lightning_diff.report sweep="$keep/dataset_size" reference=null
# The reports' bootstraps and explanations are part of what the protocol's measurement costs.
echo "$(date -u +%FT%TZ) reports: $(( $(date +%s) - reports_started )) s wall" >> "$keep/wall_time.log"
