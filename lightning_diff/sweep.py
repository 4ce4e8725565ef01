"""Expand a Hydra sweep file into its runs, one list of overrides per run, for job arrays.

A sweep file is a Hydra primary config (see sweeps/) whose ``hydra.sweeper.params`` lists
the swept values in Hydra's basic-sweeper syntax (``a,b,c``, ``range(1,4)``, ...). Its runs
are the cartesian product of those values and of any extra overrides, expanded by Hydra's
own basic sweeper in the order a multirun numbers its jobs, so array task i runs exactly
what ``python -m lightning_diff.train -m`` would run as job i::

    python -m lightning_diff.sweep count sweeps/paper_unet.yaml                # 27
    python -m lightning_diff.sweep overrides sweeps/paper_unet.yaml 3          # overrides of run 3, one a line
    python -m lightning_diff.sweep keep runs/study/no_skip docs/results/study  # a finished run's summary
    python -m lightning_diff.sweep unconverged docs/results/study              # trained runs still improving (not converged)
    python -m lightning_diff.sweep longer docs/results/study/no_skip           # its overrides with 2x the steps
    python -m lightning_diff.sweep trained paper no_skip empirical              # the presets trained by SGD: paper no_skip
"""

import argparse
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_diff.errors import UserError
from lightning_diff.run.cli import CONF_DIR, exit_on_user_error
from lightning_diff.run.study import CONVERGENCE_TOLERANCE, keep_summary, longer_overrides, unconverged


def sweep_params(path: Path) -> list[str]:
    """The sweep file's ``hydra.sweeper.params`` as Hydra override strings."""
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist; pass one of the files in sweeps/ or your own")
    try:
        params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params", default=None)
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise UserError(f"sweep file {path} is not valid YAML for Hydra ({err})") from err
    if not params:
        raise UserError(f"sweep file {path} has no hydra.sweeper.params; list the swept values there, e.g. key: a,b,c")
    return [f"{key}={value}" for key, value in OmegaConf.to_container(params).items()]


def expand(path: Path, extra: list[str] | None = None) -> list[list[str]]:
    """Every run of the sweep in ``path`` (plus ``extra`` overrides) as its list of overrides."""
    try:
        parsed = OverridesParser.create().parse_overrides(sweep_params(path) + list(extra or []))
        return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
    except HydraException as err:
        raise UserError(f"sweep {path}: {err}") from err


def run_overrides(path: Path, index: int, extra: list[str] | None = None) -> list[str]:
    """The overrides of run ``index`` (0-based, a job-array task id) of the sweep."""
    runs = expand(path, extra)
    if not 0 <= index < len(runs):
        raise UserError(f"run {index} does not exist: sweep {path} has {len(runs)} runs, numbered 0..{len(runs) - 1}")
    return runs[index]


def trained_presets(presets: list[str]) -> list[str]:
    """The presets of conf/experiment/paper/unet/ whose denoiser is trained by SGD (a second training
    seed is a control for those; a closed-form fit is the same whatever the seed)."""
    folder = Path(CONF_DIR) / "experiment" / "paper" / "unet"
    unknown = [preset for preset in presets if not (folder / f"{preset}.yaml").is_file()]
    if unknown:
        raise UserError(f"presets {', '.join(unknown)} not in {folder}; name its files without .yaml")
    found = []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for preset in presets:
            config = compose(config_name="train", overrides=[f"experiment=paper/unet/{preset}"])
            if config.denoiser.get("fit") == "sgd":
                found.append(preset)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_diff.sweep", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    count = commands.add_parser("count", help="print the number of runs")
    count.add_argument("sweep", type=Path)
    count.add_argument("overrides", nargs="*", help="extra Hydra overrides (sweeps multiply the runs)")
    show = commands.add_parser("overrides", help="print the overrides of one run, one a line")
    show.add_argument("sweep", type=Path)
    show.add_argument("index", type=int, help="0-based run number (SLURM_ARRAY_TASK_ID)")
    show.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    keep = commands.add_parser("keep", help="copy a finished run's run.json and samples.npz to DEST/<run name>")
    keep.add_argument("run_dir", type=Path)
    keep.add_argument("dest", type=Path)
    failing = commands.add_parser(
        "unconverged", help="print the trained runs below DIR still improving (a level's val loss fell >= tolerance)"
    )
    failing.add_argument("root", type=Path)
    failing.add_argument("--tolerance", type=float, default=CONVERGENCE_TOLERANCE)
    longer = commands.add_parser("longer", help="print a run's overrides with FACTOR times its steps, one a line")
    longer.add_argument("run_dir", type=Path)
    longer.add_argument("--factor", type=int, default=2)
    trained = commands.add_parser("trained", help="print those of the presets trained by SGD, one a line")
    trained.add_argument("presets", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "trained":
        print("\n".join(exit_on_user_error(lambda: trained_presets(args.presets))))
        return
    if args.command in ("unconverged", "longer"):
        found = exit_on_user_error(
            lambda: unconverged(args.root, args.tolerance)
            if args.command == "unconverged"
            else longer_overrides(args.run_dir, args.factor)
        )
        print("\n".join(str(item) for item in found))
        return
    if args.command == "keep":
        print(exit_on_user_error(lambda: keep_summary(args.run_dir, args.dest)))
        return
    if args.command == "count":
        print(exit_on_user_error(lambda: len(expand(args.sweep, args.overrides))))
        return
    for override in exit_on_user_error(lambda: run_overrides(args.sweep, args.index, args.overrides)):
        print(override)


if __name__ == "__main__":
    main()
