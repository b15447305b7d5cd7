# Two entry points for a fresh clone:  make run   |   make test
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DATA   ?= ./data

.PHONY: run serve test install protos bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The main job: a world server and 4 offline agents, each isolated (./data; Ctrl-C stops).
run: install
	$(VENV)/bin/ecology run --data-dir $(DATA)

# The world server alone, as a daemon on 127.0.0.1:50051.
serve: install
	$(VENV)/bin/ecology serve --data-dir $(DATA)

test: install
	$(PY) -m pytest -q

protos: install
	$(PY) scripts/gen_protos.py

bench: install
	$(PY) bench/bench_server.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
