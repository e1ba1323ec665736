# The two commands of the README:
#   make demo   set up (first time) and evaluate every hypothesis on the bundled demo models
#   make test   set up (first time) and run the suite's own tests (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup browser demo test check lint demo-rebuild

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	# the CPU build of torch first, or pip pulls the multi-GB CUDA build for arc-state
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m pytest -v

test: setup browser
	$(PY) -m pytest tests

# The day-to-day tier: the suite's own tests less those marked slow (the demo end to end, long sweeps).
check: setup
	$(PY) -m pytest tests -m "not slow"

# Debian's Chromium and ChromeDriver for the report's browser test (tests/test_browser.py).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium and chromium-driver for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "note: no /usr/bin/chromium: install Debian's chromium and chromium-driver, or the browser test skips"; fi

lint: setup
	$(PY) -m ruff check .

# Regenerate the synthetic data and retrain the demo models (~15 min on 2 CPU cores).
demo-rebuild: setup
	$(PY) -m fixtures.demo.build
