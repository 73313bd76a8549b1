# Two commands on a fresh machine: `make run` and `make test`. Everything else is their set-up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.grove-installed
PROTOS := $(shell find protos -name '*.proto')
PROTO_STAMP := grove/.generated
export GROVE_CACHE ?= $(HOME)/.cache/grove
MODEL_DIR := $(GROVE_CACHE)/models/SmolLM2-135M-Instruct
RUN_ARGS ?=

.PHONY: run test setup venv model protos tools bench clean

run: setup
	$(PY) -m launcher $(RUN_ARGS)

# set-up and the apt tools side by side (pip and apt-get each wait on downloads and disk)
test:
	@$(MAKE) --no-print-directory -j2 setup tools
	bash scripts/test.sh

setup: venv model protos cpu-kernel fp32-products

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt requirements-data.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned exactly: anything else would pull gigabytes of CUDA wheels
	$(PIP) install torch==2.13.0
	$(PIP) install torch==2.13.0 -r requirements.txt -r requirements-test.txt
	$(PIP) install --no-deps -r requirements-data.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

model: $(MODEL_DIR)/config.json

$(MODEL_DIR)/config.json: $(STAMP)
	$(PY) -m engine.convert

protos: $(PROTO_STAMP)

# the CPU kernels (attention; bf16 products on CPUs with AVX512-BF16 or AVX2; fp32 products on CPUs
# with AVX2, where timed faster than torch's; greedy picks; rotary embedding + K/V writes; 16-bit silu * up), built for this machine into $(GROVE_CACHE)/build (~1 s each; also built
# on first use). Never fatal:
# without a C++ compiler the engine attends, multiplies, rotates and picks with torch
.PHONY: cpu-kernel
cpu-kernel: $(STAMP)
	@$(PY) -m kernels.cpu_attention || echo "cpu-kernel: not built, the engine will attend with the torch backend"
	@$(PY) -m kernels.cpu_linear || echo "cpu-kernel: bf16 products by torch (no AVX512-BF16 or no compiler)"
	@$(PY) -m kernels.cpu_linear_fp32 || echo "cpu-kernel: fp32 products by torch (no AVX2 or no compiler)"
	@$(PY) -m kernels.cpu_greedy || echo "cpu-kernel: greedy picks by torch"
	@$(PY) -m kernels.cpu_rope || echo "cpu-kernel: rotary embedding and K/V writes by torch"
	@$(PY) -m kernels.cpu_silu_mul || echo "cpu-kernel: silu and mul by torch"

# which layout the bundled model's fp32 products take on this machine, by row count (timed once, ~5 s,
# kept in $(GROVE_CACHE)/fp32-products: engine.fp32_products). Never fatal: else the first fp32 engine times them
.PHONY: fp32-products
fp32-products: $(MODEL_DIR)/config.json cpu-kernel  # after the kernels build (timed apart from the compiler)
	@$(PY) -m engine.fp32_products >/dev/null 2>&1 || echo "fp32-products: not timed; the first fp32 engine will time them"

$(PROTO_STAMP): $(PROTOS) scripts/gen_protos.py $(STAMP)
	$(PY) scripts/gen_protos.py
	mkdir -p grove && touch $@

# docker-compose (validates compose/ without an engine) and Prometheus (promtool and the server) for
# tests/observability, g++ for the CPU attention kernel: apt-get installs them where it can; never
# fatal (the compose and Prometheus tests skip without them; without g++ the engine uses the torch
# backend and the kernel's own tests fail)
TOOLS := docker-compose promtool prometheus g++
tools:
	@if (for t in $(TOOLS); do command -v $$t >/dev/null || exit 1; done); then :; \
	elif ! command -v apt-get >/dev/null; then echo "tools: no apt-get: the compose and Prometheus tests will skip"; \
	else export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q docker-compose prometheus g++ >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker-compose prometheus g++ >/dev/null 2>&1; } \
	  || echo "tools: apt-get could not install docker-compose, prometheus and g++: the compose and Prometheus tests will skip"; fi

# docs/benchmarks.md: starts the stack, runs bench/scenarios/docs.json, rewrites the table (~15 min on 2 cores)
.PHONY: bench-docs
bench-docs: setup
	$(VENV)/bin/grove bench docs $(BENCH_ARGS)

clean:
	rm -rf grove .pytest_cache .hypothesis
