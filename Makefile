# The two commands of the README. Each creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdirs/shapes

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

# torch + torchvision for the side-by-side benchmarks and the parity run, in an environment of their own (~5.5 GB).
.venv-torch/.installed:
	$(PYTHON) -m venv .venv-torch
	.venv-torch/bin/pip install --quiet --upgrade pip
	.venv-torch/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	touch $@

.PHONY: demo test test-slow bench
demo: $(VENV)/.installed  ## Generate the shapes dataset, train on CPU, evaluate, print COCO AP.
	$(VENV)/bin/python train.py --config=configs/shapes.py --workdir=$(WORKDIR)

test: $(VENV)/.installed  ## The default test suite (CI).
	$(VENV)/bin/python -m pytest -q

test-slow: $(VENV)/.installed  ## Longer end-to-end tests, not in CI.
	$(VENV)/bin/python -m pytest -q -m slow

bench: $(VENV)/.installed .venv-torch/.installed  ## The benchmark suite, CPU sizes (python -m benchmarks --gpu on a GPU).
	$(VENV)/bin/python -m benchmarks
