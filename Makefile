# Two entry points for a fresh machine with only Python and pip:
#   make demo   set up a virtualenv and compare paged vs the Orca baselines under memory pressure
#   make test   set up a virtualenv with the test extras and run the suite
# and one more for CI:
#   make test-triton-latest   the Triton tests (-m triton) again, in a second
#               virtualenv with the newest Triton release, as a fresh
#               `pip install .[gpu]` resolves it
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned so that CI takes the CPU build that lies on disk instead of a
# multi-GB CUDA download; triton is pinned to the version of the GPU machines.
TORCH  ?= torch==2.13.0
TRITON ?= triton==3.6.0
PYTEST_ARGS ?=
LATEST ?= .venv-triton-latest

.PHONY: demo test test-triton-latest bench clean

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
	  --num-gpu-blocks 1000 --max-model-len 2048 --quiet --out runs/demo --overwrite

# pytest exits 5 when it collected no test: a wrong selection, never a pass.
NO_TESTS = if [ $$rc -eq 5 ]; then echo "pytest collected no test (exit 5): check PYTEST_ARGS and markers" >&2; fi; exit $$rc

test: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS); rc=$$?; $(NO_TESTS)

# torch stays the pinned CPU build (an unpinned one pulls CUDA, gigabytes);
# triton is left to the resolver, and upgraded on every run so that a kept
# virtualenv still tests the newest release.
$(LATEST)/.test: pyproject.toml
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q "$(TORCH)"
	$(LATEST)/bin/python -m pip install -q -e ".[gpu,test]"
	touch $@

test-triton-latest: $(LATEST)/.test
	$(LATEST)/bin/python -m pip install -q --upgrade triton
	$(LATEST)/bin/python -c 'import torch, triton; print(f"torch {torch.__version__}, triton {triton.__version__}")'
	$(LATEST)/bin/python -m pytest -n 2 -q -m triton $(PYTEST_ARGS); rc=$$?; $(NO_TESTS)

bench: $(VENV)/.core
	$(BIN)/python bench/bench_allocator.py

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache .hypothesis
