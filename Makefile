# probesuite: the two commands are `make demo` and `make test`.
# Both create .venv when missing, install what is needed (Debian packages too when run as root)
# and are quick no-ops when everything is already installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs

.PHONY: demo test setup setup-dev lint bench clean-venv system

$(BIN)/python:
	@echo "creating the virtual environment $(VENV)"
	$(PY) -m venv $(VENV)

# Debian libraries for open3d (libusb) and headless rendering (Mesa/Vulkan/EGL); fast when present.
system:
	@bash tools/setup_system.sh

$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	@echo "installing torch and the other dependencies into $(VENV) (first time: a few minutes, quiet)"
	$(BIN)/pip install -q -e .
	@touch $@

# torch-scatter has only a source distribution (about 5 minutes on 2 cores, cached by pip afterwards);
# built against the installed torch so that its compiled library matches.
$(VENV)/.stamp-dev: $(VENV)/.stamp-base
	@echo "installing the test tools (pytest, ruff) into $(VENV)"
	$(BIN)/pip install -q -e '.[dev]'
	@echo "building torch-scatter 2.1.2 from source (first time: about 5 minutes on 2 cores, quiet)"
	$(BIN)/pip install -q --no-build-isolation 'torch-scatter==2.1.2'
	@touch $@

setup: system $(VENV)/.stamp-base
setup-dev: system $(VENV)/.stamp-dev

demo: setup
	$(BIN)/pointprobe demo --out $(OUT)/point-demo
	$(BIN)/videoprobe demo --out $(OUT)/video-demo

test: setup-dev
	$(BIN)/python -m pytest -q --durations=15

lint: setup-dev
	$(BIN)/ruff check common pointprobe videoprobe tools tests

# Each script rewrites its own section of docs/benchmarks.md (ratios against a baseline of the same run).
BENCHES := $(sort $(wildcard tools/bench_*.py))
bench: setup-dev
	@for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
