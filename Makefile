# The two commands: `make demo` runs the main job, `make test` runs the tests.
# Each bootstraps .venv from setup.py on first use (and again when setup.py changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-integration test-slow bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/tfcaption run pipelines/synthetic.py

test: $(STAMP)
	$(VENV)/bin/pytest -q

# What `make test` leaves out for speed, and CI runs after it: real processes
# (kill -9 and resume, two workers, serving from a Python without tfcaption)
# and whole runs killed and resumed.
test-integration: $(STAMP)
	$(VENV)/bin/pytest -q -m "integration and not slow"

# Tests that need real weights, real data or minutes of CPU.
test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

bench: $(STAMP)
	$(VENV)/bin/python bench/extraction.py
	$(VENV)/bin/python bench/training.py
	$(VENV)/bin/python bench/serving.py

clean:
	rm -rf runs data
