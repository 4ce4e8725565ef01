# slurm/common.sh: what the templates share; sourced by each of them (after it has set
# LD_REPO), never run on its own. Sourcing it sources slurm/site.sh and runs ld_activate.

# shellcheck source=site.sh
source "$LD_REPO/slurm/site.sh"
# sbatch copies the submitting shell's environment. A W&B service token in it (set by any process
# that has opened a W&B run: a notebook, a test session, a W&B agent) points at a service on the
# submitting host that outlives this job: a requeued attempt would find its run ID still held there.
unset WANDB_SERVICE
ld_activate
if ! LD_PYTHON=$(command -v python); then
  echo "error: no python on PATH after ld_activate; set up the environment in slurm/site.sh" >&2
  exit 2
fi

# ld_train_command RUN_DIR [ARGS...]: LD_COMMAND becomes the srun command that trains one run
# in RUN_DIR with one Lightning DDP rank per task of the allocation (one task per GPU). ARGS
# (Hydra flags, then overrides) come first; the DDP settings and the run directory come last,
# so they win: they must match the allocation and stay fixed across requeues.
ld_train_command() {
  local run_dir=$1
  shift
  LD_COMMAND=(
    srun --kill-on-bad-exit=1 "$LD_PYTHON" -m lightning_diff.train "$@"
    trainer.strategy=ddp "trainer.num_nodes=${SLURM_JOB_NUM_NODES:-1}" "trainer.devices=${SLURM_NTASKS_PER_NODE:-1}"
    "hydra.run.dir=$run_dir"
  )
}

# ld_exec COMMAND...: print COMMAND exactly as it will run (bash quoting), then run it in place
# of the template; with DRY_RUN=1 only print it, on stdout, and exit 0.
ld_exec() {
  local line
  line=$(printf '%q ' "$@")
  line=${line% }
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%s\n' "$line"
    exit 0
  fi
  printf 'lightning_diff: running %s\n' "$line" >&2
  exec "$@"
}
