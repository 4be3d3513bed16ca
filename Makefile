# Two entry points for a fresh machine (see README "Quick start"):
#   make repro   create .venv, install the pinned project, run the whole DVC pipeline
#   make test    create .venv, install the pinned project + pytest, run the test suite
# The venv's bin/ goes first on PATH so that dvc's stage commands (`python pipeline/...`)
# run with the project's interpreter.

PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: repro test install mlflow-ui clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

repro: install
	dvc repro
	@echo "report: metrics/report.md"

test: install
	python -m pytest

mlflow-ui: install
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean-venv:
	rm -rf $(VENV)
