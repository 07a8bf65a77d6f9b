# Two entry points for a fresh machine with only Python and pip:
#   make demo   set up a virtualenv and compare paged vs the Orca baselines under memory pressure
#   make test   set up a virtualenv with the test extras and run the suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned so that CI takes the CPU build that lies on disk instead of a
# multi-GB CUDA download; triton is pinned to the version of the GPU machines.
TORCH  ?= torch==2.13.0
TRITON ?= triton==3.6.0
PYTEST_ARGS ?=

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)" "$(TRITON)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(VENV)/.core $@

# 400 ShareGPT-like requests into a 16k-token KV cache: the paged manager
# preempts, the contiguous baselines queue; report in runs/demo/report.html.
demo: $(VENV)/.core
	$(BIN)/pagesim compare --workload sharegpt --num-requests 400 --rate 25 \
	  --num-gpu-blocks 1000 --max-model-len 2048 --quiet --out runs/demo

test: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

bench: $(VENV)/.core
	$(BIN)/python bench/bench_allocator.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
