# Two entry points for a fresh clone:  make run   |   make test
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DATA   ?= ./data

.PHONY: run test install protos bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The main job: the world server on embedded defaults (127.0.0.1:50051, ./data).
run: install
	$(VENV)/bin/ecology serve --data-dir $(DATA)

test: install
	$(PY) -m pytest -q

protos: install
	$(PY) scripts/gen_protos.py

bench: install
	$(PY) bench/bench_server.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
