# The two commands of the README. Each creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdirs/shapes

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: demo test test-slow
demo: $(VENV)/.installed  ## Generate the shapes dataset, train on CPU, evaluate, print COCO AP.
	$(VENV)/bin/python train.py --config=configs/shapes.py --workdir=$(WORKDIR)

test: $(VENV)/.installed  ## The default test suite (CI).
	$(VENV)/bin/python -m pytest -q

test-slow: $(VENV)/.installed  ## Longer end-to-end tests, not in CI.
	$(VENV)/bin/python -m pytest -q -m slow
