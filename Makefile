# The two commands of the README: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.budgetplan-installed

.PHONY: setup demo test clean

setup: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/budgetplan analyze mbv2-w0.35-tt --target cortex-m7 --ram 256k

# the layer contracts (import-linter, pyproject.toml) first: a broken contract fails the build
test: setup
	$(PY) tests/layers.py
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info
