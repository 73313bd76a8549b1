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

.PHONY: run test setup venv model protos bench clean

run: setup
	$(PY) -m launcher $(RUN_ARGS)

test: setup
	bash scripts/test.sh

setup: venv model protos

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

$(PROTO_STAMP): $(PROTOS) scripts/gen_protos.py $(STAMP)
	$(PY) scripts/gen_protos.py
	mkdir -p grove && touch $@

clean:
	rm -rf grove .pytest_cache .hypothesis
