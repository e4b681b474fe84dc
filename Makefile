# `make demo` runs the whole flow locally; `make test` runs the test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test soak bench lint format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --editable '.[dev]'
	@# The Dagster family must stay in lock-step (a mismatch falls back to ancient releases).
	$(BIN)/pip check
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/python -m pytest -m "not soak"

# Long multi-process runs (hundreds of Dagster runs); CI runs them after `make test`.
soak: install
	$(BIN)/python -m pytest -m soak

# Speed, memory, latency and backfill figures (see benchmarks/README.md); about 15 minutes.
bench: install
	mkdir -p .local/bench
	$(BIN)/python benchmarks/export_benchmark.py --rows 100000 --rows 1000000 \
		--json .local/bench/export.json
	$(BIN)/python benchmarks/pipeline_benchmark.py --requests 10 --backfill 200 \
		--json .local/bench/pipeline.json

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .local .pytest_cache .ruff_cache *.egg-info
