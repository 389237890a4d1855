# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs chatforge, runs the pipeline on the built-in world
#   make test   creates .venv, installs chatforge with its test tools, runs the tests
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
RECIPE ?= recipes/laptop.yaml
RUN    ?= runs/laptop

.PHONY: demo test test-fast bench install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/chatforge run --recipe $(RECIPE) --run $(RUN)

test: install
	$(PY) -m pytest -q --durations=25

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/pretrain.py

clean:
	rm -rf $(VENV) *.egg-info
