# `make test` and `make demo` install what they need into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch keeps the install small; a CUDA machine can `pip install torch` itself.
TORCH ?= torch==2.13.0
# Extra pytest flags, e.g. make test PYTEST_ARGS="-x -k sweep".
PYTEST_ARGS ?=

.PHONY: test demo install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# From the shipped CQL checkpoint (the last of a pretraining run fixed in advance: seed 1 of
# docs/results.md), fine-tune with WSRL and without warmup side by side, plot both, print
# hand-over / dip / final and the behaviour policy under the same protocol (runs/demo/; see
# docs/demo.md). SEED=2 make demo fine-tunes with another seed; PRETRAIN=1 make demo collects the
# data and pretrains the checkpoint first.
SEED ?= 1
PRETRAIN ?=
demo: install
	$(PY) scripts/demo.py --seed $(SEED) $(if $(PRETRAIN),--pretrain)

clean:
	rm -rf $(VENV) runs/demo
