"""``python -m benchmarks [NAME ...] [--device cpu|cuda] [--size tiny|cpu|gpu] [--set k=v] [--out DIR]``."""

import argparse
import ast
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.measure import describe, machine
from benchmarks.registry import Config, discover, settings_for
from benchmarks.report import Row, table, write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    found = discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(found)}"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU)")
    parser.add_argument("--size", default=None, help="tiny, cpu or gpu (default: cpu on CPU, gpu on CUDA)")
    parser.add_argument(
        "--set", dest="overrides", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
        help="override a size setting, e.g. --set rounds=4 (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="directory for <name>.json (default: benchmarks/results)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    # Lightning's per-fit notices (devices, tips, "fit stopped") would bury the tables.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning(\.|$)")

    unknown = [name for name in args.names if name not in found]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(found)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ("gpu" if device.type == "cuda" else "cpu")
    names = args.names or list(found)
    overrides = dict(args.overrides)

    all_rows: list[Row] = []
    failed: list[str] = []
    started = time.time()
    for name in names:
        module = found[name]
        config = Config(device, size, settings_for(module, size, overrides, strict=len(names) == 1))
        info = machine(device)
        print(f"\n== {name}: {module.DESCRIPTION} [{size}, {device}] {config.settings}", flush=True)
        print(f"   {describe(info)}", flush=True)
        begun = time.time()
        try:
            rows = module.run(config)
        except Exception:  # noqa: BLE001 - one broken benchmark must not cost the others (a GPU lease is short)
            traceback.print_exc()
            failed.append(name)
            continue
        info["load_average_after"] = machine(device)["load_average"]
        print(table(rows), flush=True)
        write_json(
            args.out / f"{name}.json",
            {
                "benchmark": name,
                "description": module.DESCRIPTION,
                "size": size,
                "device": str(device),
                "settings": config.settings,
                "machine": info,
                "seconds": round(time.time() - begun, 1),
                "rows": [row.as_dict() for row in rows],
            },
        )
        all_rows += rows

    if len(names) > 1:
        print(f"\n== all benchmarks ({time.time() - started:.0f} s) on {describe(machine(device))}")
        print(table(all_rows))
    print(f"\nresults: {args.out}/")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
