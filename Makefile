# The two commands of the README:
#   make demo   set up (first time) and evaluate every hypothesis on the bundled demo models
#   make test   set up (first time) and run the suite's own tests (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint demo-rebuild

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	# the CPU build of torch first, or pip pulls the multi-GB CUDA build for arc-state
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m pytest -v

test: setup
	$(PY) -m pytest tests

lint: setup
	$(PY) -m ruff check .

# Regenerate the synthetic data and retrain the demo models (~15 min on 2 CPU cores).
demo-rebuild: setup
	$(PY) -m fixtures.demo.build
