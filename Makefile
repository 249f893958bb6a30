# Set-up and the project's jobs. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before the package so pip never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup serve demo eval test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[serve,dev]"
	touch $@

tiny-models/small/config.json: | setup
	$(BIN)/python -m glimp_ray.tiny tiny-models

# The main job: the demo models served on a local Ray cluster (serve run starts one).
serve: setup
	$(BIN)/serve run configs/demo.yaml

# One request in-process, printed with its per-step table.
demo: setup
	$(BIN)/glimp-ray generate --config configs/demo-local.yaml "Start with 12, then multiply by 7, then add 5. Work modulo 100. What is the result?"

eval: setup
	$(BIN)/glimp-ray eval --config configs/demo-local.yaml --dataset demo --out eval-out

tiny: setup tiny-models/small/config.json
	$(BIN)/glimp-ray generate --config configs/tiny.yaml "What is 6 times 7?"

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy glimp_ray

bench: setup
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) tiny-models
