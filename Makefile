# The README's commands. `make demo` and `make test` set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# the CPU wheel of torch: on this project's CI machines it comes from local disk in seconds;
# elsewhere pip fetches it from PyPI (override, e.g. TORCH="torch>=2.4" for a CUDA build)
TORCH  ?= torch==2.13.0
SHARED ?= $(abspath ../shared)

.PHONY: setup demo test test-fast lint bench clean

setup: $(BIN)/.setup-done

$(BIN)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,track,plot]"
	touch $@

# the main job: get Shakespeare, prepare it at character level, train, print samples
demo: setup
	$(BIN)/tinylm train --config configs/shakespeare-char.toml --resume
	$(BIN)/tinylm sample runs/shakespeare-char --max-new-tokens 400

# the whole test suite, slow tests included, after the linter (what CI runs)
test: lint
	TINYLM_SHARED_DATA=$(SHARED)/data TIKTOKEN_CACHE_DIR=$(SHARED)/tiktoken_cache $(BIN)/python -m pytest -q

# ruff with the rules in pyproject.toml, over everything that is code
lint: setup
	$(BIN)/ruff check src tests benchmarks

test-fast: setup
	TINYLM_SHARED_DATA=$(SHARED)/data TIKTOKEN_CACHE_DIR=$(SHARED)/tiktoken_cache $(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/pip install --quiet -e ".[bench]" "$(TORCH)"
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs data .pytest_cache
