# Set-up and the two everyday commands.  `make pipeline` runs the main job on the embedded default;
# `make test` runs the test suite.  Each creates the virtual environment first when it is missing.

VENV     ?= .venv
PYTHON   ?= python3
# The CPU build of torch; on a CUDA machine set TORCH="torch==2.13.0 --index-url ..." or install it first.
TORCH    ?= torch==2.13.0
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.minitron-installed
ARGS     ?=
# CI (CI=true) and SLOW=1 also run the end-to-end tests marked `slow`.
ifneq ($(filter true 1,$(CI) $(SLOW)),)
PYTEST_MARK := -m "slow or not slow"
else
PYTEST_MARK :=
endif

.PHONY: setup pipeline test clean-env

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

pipeline: $(STAMP)
	$(VENV)/bin/minitron pipeline $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_MARK) $(ARGS)

clean-env:
	rm -rf $(VENV)
