# The two commands of the README. Each creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdirs/shapes
PYTEST_ARGS ?=  # More pytest arguments for the test targets, e.g. PYTEST_ARGS='-n 2' (pytest-xdist workers).

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

.PHONY: demo test test-fast test-slow bench gpu-wheels notebook
demo: $(VENV)/.installed  ## Generate the shapes dataset, train on CPU, evaluate, print COCO AP.
	$(VENV)/bin/python train.py --config=configs/shapes.py --workdir=$(WORKDIR)

test: $(VENV)/.installed  ## The default test suite (CI).
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed  ## The unit tier (tests marked fast) on one device, under 3 minutes: the edit-test loop.
	FCOS_TEST_DEVICES=1 $(VENV)/bin/python -m pytest -q -m 'fast and not slow' --durations=5 $(PYTEST_ARGS)

test-slow: $(VENV)/.installed  ## Longer end-to-end tests, not in CI.
	$(VENV)/bin/python -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(VENV)/.installed .venv-torch/.installed  ## The benchmark suite, CPU sizes (python -m benchmarks --gpu on a GPU).
	$(VENV)/bin/python -m benchmarks

notebook: $(VENV)/.installed  ## Run notebooks/inspect_assignment.ipynb in place, storing its outputs and figures.
	$(VENV)/bin/python notebooks/execute.py notebooks/inspect_assignment.ipynb

# The wheels the lent GPU machine's image lacks (Python 3.12, jax 0.11.2 + CUDA, torch; no ml-collections or
# pycocotools, and no registry to install from): downloaded here into .whl/, carried with benchmarks/device_run.sh.
GPU_WHEELS ?= ml-collections==1.1.0 pycocotools==2.0.11
gpu-wheels:  ## Download GPU_WHEELS for CPython 3.12 manylinux x86-64 into .whl/ (for the device run).
	rm -rf .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	@du -ch .whl/*.whl
