# The README's commands. `make demo` and `make test` set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# the CPU wheel of torch: on this project's CI machines it comes from local disk in seconds;
# elsewhere pip fetches it from PyPI (override, e.g. TORCH="torch>=2.4" for a CUDA build)
TORCH  ?= torch==2.13.0
SHARED ?= $(abspath ../shared)

.PHONY: setup demo test test-fast test-gpu lint bench bench-gpu gpu-check clean

setup: $(BIN)/.setup-done

# pip's own output is the progress (the torch wheel alone is a few hundred MB from PyPI)
$(BIN)/.setup-done: pyproject.toml
	@echo "==> set-up 1/3: a virtual environment in $(VENV)/"
	$(PYTHON) -m venv $(VENV)
	@echo "==> set-up 2/3: PyTorch ($(TORCH), CPU build unless TORCH says otherwise)"
	$(BIN)/pip install "$(TORCH)"
	@echo "==> set-up 3/3: tinylm and its tools (pip install -e '.[dev,track,plot]')"
	$(BIN)/pip install -e ".[dev,track,plot]"
	touch $@
	@echo "==> set-up done. To use the tinylm command in your shell: source $(VENV)/bin/activate"

# the main job: get Shakespeare, prepare it at character level, train 3 minutes, print samples.
# Run again, it says the run is complete and samples at once. README.md lists these same two
# commands (tests/test_readme.py checks that they agree and runs them).
demo: setup
	$(BIN)/tinylm train --config configs/shakespeare-char.toml --resume
	$(BIN)/tinylm sample runs/shakespeare-char --prompt "ROMEO:" --max-new-tokens 400
	@echo "==> To use tinylm yourself: source $(VENV)/bin/activate, then e.g. tinylm sample runs/shakespeare-char"

# the whole test suite, slow tests included, after the linter (what CI runs)
test: lint
	TINYLM_SHARED_DATA=$(SHARED)/data TIKTOKEN_CACHE_DIR=$(SHARED)/tiktoken_cache $(BIN)/python -m pytest -q

# ruff with the rules in pyproject.toml, over everything that is code
lint: setup
	$(BIN)/ruff check src tests benchmarks

test-fast: setup
	TINYLM_SHARED_DATA=$(SHARED)/data TIKTOKEN_CACHE_DIR=$(SHARED)/tiktoken_cache $(BIN)/python -m pytest -q -m "not slow"

# the GPU suite alone (tests/test_cuda.py; each test skips, saying why, where torch sees no CUDA device).
# Needs a CUDA build of torch: make setup TORCH="torch>=2.4" (or your CUDA wheel)
test-gpu: setup
	TINYLM_SHARED_DATA=$(SHARED)/data TIKTOKEN_CACHE_DIR=$(SHARED)/tiktoken_cache $(BIN)/python -m pytest -q -m cuda tests/test_cuda.py

bench: setup
	$(BIN)/pip install --quiet -e ".[bench]" "$(TORCH)"
	$(BIN)/python benchmarks/bench_train.py

# GPT-2 small (124M, context 1024) training step on the GPU: tinylm eager and compiled vs Hugging Face GPT-2
bench-gpu: setup
	$(BIN)/pip install --quiet -e ".[bench]"
	TINYLM_SHARED_DATA=$(SHARED)/data $(BIN)/python benchmarks/bench_gpu.py

# every GPU figure in one command, with the machine's own Python (no venv, nothing installed): the GPU tests, the
# suite with the GPU visible, bench_gpu at batch 16 and 32, fp32 vs bf16, the profile, the GPU preset; writes
# gpu-check/gpu-check.md and .json. GPU_PYTHON=.venv/bin/python to use the venv instead.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=src:benchmarks TINYLM_SHARED_DATA=$(SHARED)/data TIKTOKEN_CACHE_DIR=$(SHARED)/tiktoken_cache \
		$(GPU_PYTHON) benchmarks/gpu_check.py --out gpu-check

clean:
	rm -rf $(VENV) runs data hf reports model.safetensors model.tlm .pytest_cache gpu-check
