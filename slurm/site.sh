# slurm/site.sh: everything cluster-specific, in one place. Edit this file once per cluster;
# every template in slurm/ sources it (through slurm/common.sh), and so can your shell.
#
# 1. Submission defaults (partition, account, QOS). sbatch reads them as SBATCH_* variables
#    from the shell you submit from, so source this file there first:
#        source slurm/site.sh && sbatch slurm/train.sbatch ...
#    Options on the sbatch command line still win. The Hydra launcher configs
#    (conf/hydra/launcher/slurm*.yaml) read the same LD_* variables.
# 2. Run-time setup inside every job: ld_activate (modules, conda or venv) and the runs root.
#
# Every value can also be set in the environment beforehand (LD_PARTITION=gpu source ...).

# ---- 1. submission defaults (empty: the cluster's default) ----
LD_PARTITION=${LD_PARTITION:-}   # e.g. gpu
LD_ACCOUNT=${LD_ACCOUNT:-}       # e.g. my_lab
LD_QOS=${LD_QOS:-}               # e.g. normal
export LD_PARTITION LD_ACCOUNT LD_QOS
if [ -n "$LD_PARTITION" ]; then export SBATCH_PARTITION=$LD_PARTITION; fi
if [ -n "$LD_ACCOUNT" ]; then export SBATCH_ACCOUNT=$LD_ACCOUNT; fi
if [ -n "$LD_QOS" ]; then export SBATCH_QOS=$LD_QOS; fi

# ---- 2. run-time setup ----
# The repository (set by the templates; when you source this file by hand, from its location).
LD_REPO=${LD_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# Run directories (checkpoints, run.json, W&B runs): on a file system every node sees.
LD_RUNS_ROOT=${LD_RUNS_ROOT:-$LD_REPO/runs}
export LD_REPO LD_RUNS_ROOT

# Make `python` (and `wandb`) the environment lightning_diff is installed in.
ld_activate() {
  # module purge
  # module load cuda/12.4
  # source "$HOME/miniforge3/etc/profile.d/conda.sh" && conda activate lightning_diff
  if [ -f "$LD_REPO/.venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$LD_REPO/.venv/bin/activate"
  fi
  # One thread pool per task, sized to the task's CPUs.
  export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}
}
