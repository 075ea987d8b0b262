# The two commands of the README. Everything installs into .venv from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-all demo install clean bench-camvid bench-camvid-fast bench-camvid-table

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install when the project's requirements change.
# --no-compile: byte-compiling every installed module (torch's and the extras' thousands of files) took about
# half of the install; Python compiles what it imports on first use instead (docs/testing.md).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e ".[test,export,data,geo,weights,serve,deploy,mobile]"
	touch $(STAMP)

install: $(STAMP)

# The suite CI runs: at most 10 minutes from a fresh clone, install included,
# on a 2-core AVX2-only CPU (docs/testing.md has the measured times). Tests
# marked slow (full-size models, the heaviest configs, ONNX export of every
# architecture) run with `make test-all`. Both print their 15 slowest tests,
# so a test that got slow is seen the day it lands. They run in one pytest-xdist
# worker per core (tests/conftest.py gives each worker its share of torch's
# threads): 1.7x faster on 2 cores. --dist loadfile runs each test file in one worker, so a module-scoped
# fixture (a trained model, its exports, the DDP runs) is built once, not once in each worker that gets one of
# its tests (--dist loadgroup would choose the modules, but does not group under pytest 9.2 and xdist 3.8:
# pytest-xdist issue 1386, the group suffix it writes into the node ID no longer takes).
# PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=15

demo: $(STAMP)
	$(BIN)/imseg demo $(if $(IMSEG_DATA),--data-root $(IMSEG_DATA),) $(if $(filter scratch,$(DEMO)),--scratch,)

# CamVid from scratch (docs/benchmarks.md): each writes benchmarks/results/camvid-*.json.
bench-camvid: $(STAMP)
	$(BIN)/python benchmarks/camvid.py flagship --fresh --select-tta $(if $(IMSEG_DATA),--data-root $(IMSEG_DATA),)

bench-camvid-fast: $(STAMP)
	$(BIN)/python benchmarks/camvid.py fast --fresh --select-tta $(if $(IMSEG_DATA),--data-root $(IMSEG_DATA),)

bench-camvid-table: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH benchmarks/camvid_table.sh 2
	$(BIN)/python benchmarks/camvid_table.py

clean:
	rm -rf $(VENV) runs
