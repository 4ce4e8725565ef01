"""Speed and memory of lightning_diff against plain peers, run in one process back to back.

``python -m benchmarks`` runs every benchmark at its default size for the device and prints
one combined table; ``python -m benchmarks NAME [NAME ...] [--device cuda] [--size tiny|cpu|gpu]
[--set key=value] [--out DIR]`` runs some. Each writes ``<out>/<name>.json`` (default
``benchmarks/results/``). See docs/performance.md for the tables and what they mean.

Adding a benchmark: a module ``benchmarks/<name>.py`` is found by the runner when it defines

- ``DESCRIPTION: str``: one line, ours against what;
- ``SIZES: dict[str, dict]``: named settings, at least ``"tiny"`` (seconds; the tests run it),
  ``"cpu"`` (the default on CPU, minutes at most on 2 cores) and ``"gpu"`` (the default on CUDA);
- ``run(config: benchmarks.registry.Config) -> list[benchmarks.report.Row]``: measure
  ``config.settings`` (the chosen size with any ``--set`` overrides) on ``config.device``.

Each Row holds ours, the peer and the target for ours / peer; the runner adds the machine,
prints and writes them. Helpers: :mod:`benchmarks.measure` (interleaved timing, peak memory,
machine description) and :mod:`benchmarks.workloads` (the shared UNet, data and objective).
"""
