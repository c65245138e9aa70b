# `make studio` opens the dashboard (embedded store, queue and worker). `make check` = lint + types + import
# contracts + tests (what CI runs). `make quickstart` trains the tiny NTP model headless.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines pin the CPU build of torch; GPU hosts install without it (`pip install -e .`).
CONSTRAINTS ?= constraints-cpu.txt

.PHONY: install studio check lint types contracts test quickstart bench clean

# One line while installing; pip's and setuptools' output goes to $(VENV)/install.log (shown if it fails).
$(BIN)/wmtp: pyproject.toml $(CONSTRAINTS)
	@echo "installing WMTP Studio and its dependencies into $(VENV) (takes ~3 min; log in $(VENV)/install.log)"
	@$(PY) -m venv $(VENV)
	@( $(BIN)/pip install --upgrade pip && $(BIN)/pip install -c $(CONSTRAINTS) -e '.[dev]' ) \
		> $(VENV)/install.log 2>&1 || { tail -n 30 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@touch $@

install: $(BIN)/wmtp

lint: install
	$(BIN)/ruff check wmtp_studio workers tests benchmarks migrations
	$(BIN)/ruff format --check wmtp_studio workers tests benchmarks migrations

types: install
	$(BIN)/mypy

contracts: install
	$(BIN)/lint-imports

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

check: lint types contracts test

studio: install
	$(BIN)/wmtp-studio

quickstart: install
	$(BIN)/wmtp train recipes/tiny-ntp.yaml --run-dir runs/tiny-ntp

bench: install
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_algorithms.py
	$(BIN)/python benchmarks/bench_sandbox.py
	$(BIN)/python benchmarks/bench_speculative.py
	$(BIN)/python benchmarks/bench_studio.py
	$(BIN)/python benchmarks/bench_tui.py
	$(BIN)/python benchmarks/bench_run_screen.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
