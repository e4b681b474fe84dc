# `make demo` runs the whole flow locally; `make test` runs the test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# uv installs the exact set pinned in uv.lock; the Makefile fetches uv itself if needed.
UV_VERSION := 0.13.9
UV := .local/uv/bin/uv
# The interpreter for the virtualenv: any CPython >= 3.11 (CI pins the floor, 3.11).
VENV_PYTHON ?= $(shell $(PYTHON) -c 'import sys; print(sys.executable)')

.PHONY: install lock demo test soak bench lint format clean image test-containers bench-containers

$(UV):
	PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip install --quiet --disable-pip-version-check --target .local/uv/lib "uv==$(UV_VERSION)"
	mkdir -p .local/uv/bin && ln -sf ../lib/bin/uv $(UV)

# --compile-bytecode: uv skips it by default, and Dagster starts its run workers and code
# servers with -B (no .pyc written), so without it every run would compile Dagster anew.
# The project itself is installed editable: compile it too (about 0.25 s per run worker).
$(BIN)/.installed: pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --quiet --locked --compile-bytecode --extra dev --python "$(VENV_PYTHON)"
	$(BIN)/python -m compileall -q voicesurvey_exports
	touch $@

install: $(BIN)/.installed

# After changing a dependency in pyproject.toml: pin the new set in uv.lock and commit it.
lock: | $(UV)
	$(UV) lock

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/python -m pytest -m "not soak and not containers" --durations=20

# Long multi-process runs (hundreds of Dagster runs); CI runs them after `make test`.
soak: install
	$(BIN)/python -m pytest -m "soak and not containers" --durations=20

# The production image (deploy/Dockerfile): voicesurvey-exports:<version> and :latest.
# Needs a Docker daemon; downloads the locked wheels on the host (scripts/build-image.sh).
image: | $(UV)
	scripts/build-image.sh $(UV)

# Every run in its own container: the image's code server, daemon and webserver as
# containers with DockerRunLauncher, against this machine's PostgreSQL and a moto server
# (tests/test_containers.py); about 5-10 minutes. CI runs it after `make soak`.
test-containers: install image
	$(BIN)/python -m pytest -m containers tests/test_containers.py

# The image's size and build time, and request-to-link with DockerRunLauncher
# (benchmarks/README.md, "Containers").
bench-containers: install
	$(BIN)/python benchmarks/container_benchmark.py --requests 10 \
		--json .local/bench/containers.json

# Speed, memory, latency, CPU and backfill figures beside their targets, on the default
# instance and on the opt-in fast path (see benchmarks/README.md); about 30 minutes.
bench: install
	mkdir -p .local/bench
	$(BIN)/python benchmarks/export_benchmark.py --rows 100000 --rows 1000000 \
		--json .local/bench/export.json
	$(BIN)/python benchmarks/pipeline_benchmark.py --instance both --requests 10 \
		--burst 100 --failing 60 --backfill 200 --json .local/bench/pipeline.json

# Also Dagster's own check of the definitions (`dg check defs`), on a throwaway instance.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	home=$$(mktemp -d) && DAGSTER_HOME=$$home DATABASE_URL=sqlite:///$$home/app.db \
		$(BIN)/dg check defs; status=$$?; rm -rf "$$home"; exit $$status

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .local .pytest_cache .ruff_cache *.egg-info
