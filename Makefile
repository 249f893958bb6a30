# Set-up and the project's jobs. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before the package so pip never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

tiny-models/small/config.json: | setup
	$(BIN)/python -m glimp_ray.tiny tiny-models

demo: setup tiny-models/small/config.json
	$(BIN)/glimp-ray generate --config configs/tiny.yaml "What is 6 times 7?"

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy glimp_ray

bench: setup
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) tiny-models
