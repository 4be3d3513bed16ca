# Two entry points for a fresh machine (see README "Quick start"):
#   make repro   create .venv, install the pinned project, run the whole DVC pipeline
#   make test    create .venv, install the pinned project + pytest, install Debian's chromium
#                if missing (apt-get, sudo when not root; CXR14_SKIP_BROWSER_TESTS=1 skips
#                that and the browser tests), run the test suite
#   make lint    ruff (lint, import order, format check) and mypy, at the versions pinned in
#                pyproject.toml's `lint` extra (.pre-commit-config.yaml runs the same); CI runs it
#                before the tests
# The venv's bin/ goes first on PATH so that dvc's stage commands (`python pipeline/...`)
# run with the project's interpreter.

PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

LINT_PATHS := src pipeline tests benchmarks

.PHONY: repro test lint install mlflow-ui clean-venv bench-scale bench-throughput

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,lint]'
	touch $@

repro: install
	dvc repro
	@echo "report: metrics/report.md"

test: install
	scripts/ensure-chromium
	python -m pytest

lint: install
	ruff check $(LINT_PATHS)
	ruff format --check $(LINT_PATHS)
	mypy

# The UI of the workspace's store on 127.0.0.1:$(MLFLOW_UI_PORT) (make mlflow-ui MLFLOW_UI_PORT=5001 when
# 5000 is taken). Starlette's deprecation notice about MLflow's own WSGI mount is not the user's to act on.
MLFLOW_UI_PORT ?= 5000
mlflow-ui: install
	@python -c "from cxr14.tracking import runs_page_url; print('training runs:', runs_page_url('http://127.0.0.1:$(MLFLOW_UI_PORT)'))" || true
	PYTHONWARNINGS="ignore:starlette.middleware.wsgi is deprecated" \
	  mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_UI_PORT)

# NIH-scale benchmark (benchmarks/scale.py; README "Real NIH data"): an NIH-sized folder of
# hard-linked 1024 px PNGs, the pipeline with one small model stage by stage (wall, DVC, RSS, disk).
# ~40 min on 2 cores and ~10 GB free under SCALE_WORK at the full 112,120 images.
SCALE_IMAGES ?= 112120
SCALE_WORK ?= /tmp/cxr14-scale
bench-scale: install
	python benchmarks/scale.py --images $(SCALE_IMAGES) --distinct 3000 --work $(SCALE_WORK) --json scale-benchmark.json

# Training throughput (benchmarks/throughput.py; README "Training on a GPU node"): device-only step,
# full step with the real loader, loader alone, compile/bf16/channels-last variants, inference, for
# params.yaml's models on the best device; e.g. THROUGHPUT_ARGS='--cache data/cache --device cuda'.
THROUGHPUT_ARGS ?=
bench-throughput: install
	python benchmarks/throughput.py $(THROUGHPUT_ARGS) --json throughput.json

clean-venv:
	rm -rf $(VENV)
