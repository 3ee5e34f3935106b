# `make test` and `make demo` install what they need into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch keeps the install small; a CUDA machine can `pip install torch` itself.
TORCH ?= torch==2.13.0

.PHONY: test demo install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

test: install
	$(PY) -m pytest

# Collect a medium Hopper dataset with the shipped policy, pretrain CQL, fine-tune with WSRL,
# plot, print the score table (runs/demo/; about 10 min on 2 CPU cores). SEED=1 make demo ...
SEED ?= 0
demo: install
	$(PY) scripts/demo.py --seed $(SEED)

clean:
	rm -rf $(VENV) runs/demo
