# Every target sets up what it needs itself; a fresh clone needs only python3 (3.9+) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench bench-collector lint typecheck format install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/ruff check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

test: lint typecheck
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/async_client.py

clean:
	rm -rf $(VENV) .bench-venv .mypy_cache .ruff_cache .pytest_cache

# Ingest sends random messageIds, as clients' UUIDs are; the second run sends ids that mostly
# grow, to show that the SQLite store's deduplication costs about the same for both.
bench-collector: $(STAMP)
	$(BIN)/python bench/collector_ingest.py
	$(BIN)/python bench/collector_ingest.py --stores sqlite --warehouse-events 0 --growing-ids
	$(BIN)/python bench/collector_routing.py
	$(BIN)/python bench/collector_routing.py --events 50000 --db postgresql --collectors 2
	$(BIN)/python bench/collector_warehouse.py --events 50000
