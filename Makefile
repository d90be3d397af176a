# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch and torchvision as a matching pair (timm, in the `models` extra, needs torchvision,
# which pins its torch): on this project's machines pip takes both from local disk. Override
# on another machine, e.g. make setup TORCH_SPEC="torch==2.14.1+cu128 torchvision==0.29.1+cu128"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test,models]"
	touch $@

demo: setup
	$(VENV)/bin/autocompress demo

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -q --durations=15

clean:
	rm -rf $(VENV) autocompress-data .pytest_cache
