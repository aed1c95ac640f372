# make train: set up .venv, install fastgpt, train on the embedded Shakespeare, print a sample.
# make test:  set up .venv, install fastgpt with its dev extras, run the test suite.
#
# TORCH picks the torch build. The default, torch==2.13.0, is a small CPU-only build; on a CUDA
# machine use e.g. `make train TORCH=torch` (PyPI's CUDA build) so the kernels and the CUDA
# extension are used.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test lint clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=70" wheel ninja
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-build-isolation -e ".[dev,hf]"
	touch $@

train: $(STAMP)
	$(PY) -m fastgpt.train

test: $(STAMP)
	$(PY) -m pytest tests -q -ra

lint: $(STAMP)
	$(PY) -m ruff check fastgpt tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info fastgpt/_C*.so
