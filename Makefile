# FleetVL developer commands. `make help` lists them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
DEMO := .cache/demo
FLEET_EDGE := models/fleet-edge

.DEFAULT_GOAL := help
.PHONY: help setup demo demo-fleet demo-random up test test-fast lint format bench-edge clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned CPU build first: a bare `torch` requirement would pull the CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[edge,export,serve,cloud,controller,chart,bench,dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything (idempotent)

demo: setup  ## export an INT4 edge bundle and ask it about a gauge (trained fleet-edge if shipped)
	@if [ -f $(FLEET_EDGE)/config.json ]; then $(MAKE) --no-print-directory demo-fleet; else \
	  $(MAKE) --no-print-directory demo-random; fi

demo-fleet: setup  ## the trained models/fleet-edge, INT4, reads examples/fleet_gauge.png (60)
	@[ $(DEMO)/fleet-int4/manifest.json -nt $(FLEET_EDGE)/model.safetensors ] || \
	  $(BIN)/fleetvl model export $(FLEET_EDGE) $(DEMO)/fleet-int4 --precision int4
	$(BIN)/fleetvl ask $(DEMO)/fleet-int4 "What does the gauge read?" --image examples/fleet_gauge.png --max-tokens 8

demo-random: setup  ## a tiny random-weight checkpoint (fluent nonsense, honest numbers)
	@test -f $(DEMO)/hf/.done || ($(BIN)/fleetvl model init $(DEMO)/hf --preset tiny && touch $(DEMO)/hf/.done)
	@test -f $(DEMO)/int4/manifest.json || $(BIN)/fleetvl model export $(DEMO)/hf $(DEMO)/int4 --precision int4
	$(BIN)/fleetvl ask $(DEMO)/int4 "What does the oil-level gauge read?" --image examples/gauge.png --max-tokens 24

up: setup  ## the whole fleet on this machine (examples/up.yaml), then the demo; Ctrl-C stops it
	$(BIN)/fleetvl up --demo

test: setup lint  ## lint, then the whole test suite
	$(BIN)/python -m pytest

test-fast: setup  ## unit tests only
	$(BIN)/python -m pytest tests/unit

lint: setup  ## ruff, then mypy (the packages and strictness are in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/mypy

format: setup  ## ruff format + autofix
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench-edge: setup  ## edge engine benchmark on the edge-bench preset (long: builds a 0.5B model)
	$(BIN)/python benchmarks/edge_engine.py --json benchmarks/results/edge_engine.json

clean:  ## remove the venv and cached artifacts
	rm -rf $(VENV) .cache
