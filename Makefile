# `make test` and `make demo` set everything up on a fresh machine that has only python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check kernelflow tests bench examples
	$(PY) -m pytest -q -p no:cacheprovider -n auto --maxprocesses=4 --dist loadfile tests

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(PY) -m ruff check kernelflow tests bench examples

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) bench/dispatch.py
	$(PY) bench/train_mlp.py

clean:
	rm -rf $(VENV) build *.egg-info
