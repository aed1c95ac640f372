# make train: set up .venv with what training uses (torch, fastgpt and its dependencies), train on
#             the embedded Shakespeare, print a sample.
# make test:  the same venv plus the dev extras (pytest, ruff, hypothesis, triton for its CPU
#             interpreter), the hf extra (transformers) and the eval extra (lm-eval, for its
#             adapter's tests), then the test suite.
#
# TORCH picks the torch build. The default, torch==2.13.0, is a small CPU-only build; on a CUDA
# machine use e.g. `make train TORCH=torch` (PyPI's CUDA build, which brings triton) so the kernels
# and the CUDA extension are used.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# setuptools' banner about editable installs, printed on every install, says nothing to act on
PIP := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q

.PHONY: train test lint clean

# numpy with torch: setup.py imports torch, which warns "Failed to initialize NumPy" without it
$(RUN_STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip "setuptools>=70" wheel ninja
	$(PIP) "$(TORCH)" numpy
	$(PIP) --no-build-isolation -e .
	touch $@

$(STAMP): $(RUN_STAMP)
	$(PIP) --no-build-isolation -e ".[dev,hf,eval]"
	touch $@

train: $(RUN_STAMP)
	$(PY) -m fastgpt.train

test: $(STAMP)
	$(PY) -m pytest tests -q -ra

lint: $(STAMP)
	$(PY) -m ruff check fastgpt tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info fastgpt/_C*.so
