# Two commands on a fresh machine: `make demo` and `make test`. Everything lives in ./.venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= var

# Telemetry off by default: this software touches PHI (override in your environment if you must).
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= False


.PHONY: demo test test-fast bench bench-quick venv clean docs lint lint-rules

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dask,durable,postgres,sftp]'
	touch $(STAMP)

# The demo starts from an empty ./var each time so it always shows a full night.
demo: $(STAMP)
	rm -rf $(OUT)
	mkdir -p $(OUT)/landing
	cp data/fixtures/*.csv data/fixtures/*.parquet $(OUT)/landing/
	$(VENV)/bin/b12pipeline nightly --landing $(OUT)/landing --out $(OUT) --night 2024-03-02
	@echo
	@echo "Next:"
	@echo "  coders:   $(VENV)/bin/b12pipeline queue show coding --out $(OUT)"
	@echo "            $(VENV)/bin/b12pipeline queue export coding --out $(OUT) --to coding.xlsx   (Excel; holds PHI)"
	@echo "  IT:       open $(OUT)/runs/*/report.html (the run report; validation pages linked from it)"
	@echo "  rules:    $(VENV)/bin/b12pipeline rules list"

test: $(STAMP)
	$(PY) -m pytest -q

# The inner loop: the whole suite but the tests marked slow (Prefect flows, subprocesses, servers,
# over ~5 s each) or browser. `make test` (CI) still runs everything.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

# ruff (lint and format check) and mypy (types, configured in pyproject.toml); the test extra brings both.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/run_bench.py

# Small sizes: exercises the harness (numbers mean nothing); results go to a temp folder, not bench/RESULTS.md.
bench-quick: $(STAMP)
	BENCH_QUICK=1 $(PY) bench/run_bench.py

docs: $(STAMP)
	$(VENV)/bin/b12pipeline rules docs

lint-rules: $(STAMP)
	$(VENV)/bin/b12pipeline rules lint

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
