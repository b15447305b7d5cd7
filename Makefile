# Two entry points for a fresh clone:  make run   |   make test
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DATA   ?= ./data

.PHONY: run serve test install setup-run setup-test protos bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# What a fresh machine needs beyond Python (scripts/setup.sh: bubblewrap, Docker engine and the
# local agent image; for tests also Node.js and npm packages). Installs where it can (root +
# apt-get), else prints the exact command and goes on.
setup-run: install
	PY=$(PY) scripts/setup.sh run

setup-test: install
	PY=$(PY) scripts/setup.sh test

# The main job: a world server and 4 offline agents, each isolated (./data; Ctrl-C stops).
run: setup-run
	$(VENV)/bin/ecology run --data-dir $(DATA)

# The world server alone, as a daemon on 127.0.0.1:50051.
serve: install
	$(VENV)/bin/ecology serve --data-dir $(DATA)

# The whole suite twice: on SQLite (the default backend), then with every world on a real
# PostgreSQL server started by the tests (ECOLOGY_TEST_DATABASE=postgresql, tests/pg.py).
# Both always run; the target fails if either failed. Each prints its duration.
test: setup-test
	@set +e; \
	t0=$$(date +%s); ECOLOGY_TEST_DATABASE=sqlite $(PY) -m pytest -q $(PYTEST_ARGS); lite=$$?; \
	t1=$$(date +%s); ECOLOGY_TEST_DATABASE=postgresql $(PY) -m pytest -q $(PYTEST_ARGS); pg=$$?; \
	t2=$$(date +%s); \
	echo "make test: SQLite suite exit $$lite in $$((t1 - t0)) s; PostgreSQL suite exit $$pg in $$((t2 - t1)) s"; \
	[ $$lite -eq 0 ] && [ $$pg -eq 0 ]

protos: install
	$(PY) scripts/gen_protos.py

bench: install
	$(PY) bench/bench_server.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
