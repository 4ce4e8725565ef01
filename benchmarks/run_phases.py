"""Where a training run's wall time goes: ``python -m benchmarks.run_phases --out FILE.json -- <train overrides>``.

Runs ``python -m lightning_diff.train``'s Hydra main with the overrides, timing Lightning's
``Trainer.fit`` (with the measuring callback), the measuring callback's own measurements inside it
(``Measure.measure``: sampling, features, metrics), ``Trainer.validate`` and the final sampling
(``write_samples``), and writes them with the total, the overrides, the commit and the machine to
``--out``. It patches by name whatever ``lightning_diff`` is imported, so the same script times an
older checkout (``PYTHONPATH=<its checkout>:. python benchmarks/run_phases.py ...``): issue 23's closed-form example was measured so,
before and after (docs/performance.md, "A closed-form machine's run").
"""

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmarks.measure import machine


def timed(phases: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def measurement_share(phases: dict[str, float]) -> dict[str, float]:
    """What measuring a run costs beside training it: the measuring callback inside fit and the final
    samples, against fit without its measurements (issue 22 asks for at most 20%)."""
    measuring = phases.get("measure (inside fit)", 0.0) + phases.get("samples", 0.0)
    training = phases.get("fit (with the measuring callback)", 0.0) - phases.get("measure (inside fit)", 0.0)
    if training <= 0:
        return {}
    return {"measurement_s": measuring, "training_s": training, "measurement_share_of_training": measuring / training}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    import lightning_diff
    import lightning_diff.train as entry

    # Either the current layout (train(cfg) in lightning_diff.training) or an older one (in lightning_diff.train).
    library = sys.modules.get("lightning_diff.training", entry)
    phases: dict[str, float] = {}
    L.Trainer.fit = timed(phases, "fit (with the measuring callback)", L.Trainer.fit)
    L.Trainer.validate = timed(phases, "validate", L.Trainer.validate)
    measuring = sys.modules.get("lightning_diff.callbacks.measure")
    if measuring is not None:  # an older checkout may not have the callback
        measuring.Measure.measure = timed(phases, "measure (inside fit)", measuring.Measure.measure)
    library.write_samples = timed(phases, "samples", library.write_samples)
    sys.argv = [sys.argv[0], *args.overrides]
    started = time.perf_counter()
    try:
        entry.main()
    finally:
        phases["total"] = time.perf_counter() - started
        source = Path(lightning_diff.__file__).parent.parent
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        result = {"phases_s": phases, **measurement_share(phases), "overrides": args.overrides, "commit": commit,
                  "machine": machine(torch.device("cpu"))}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(phases, indent=2))


if __name__ == "__main__":
    main()
