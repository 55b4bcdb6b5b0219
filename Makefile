# The two commands of a fresh machine: `make test` and `make demo`. Each creates .venv and runs:
# `make test` installs the project with its development tools, the demos only the project and
# its dependencies (or use the development install, when there is one).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo

.PHONY: test lint typecheck pytest docs demo demo-cohorts demo-migration bench bench-stores bench-fleet bench-patterns coverage clean vendor-vectors

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet --editable . --group dev
	touch $(STAMP)

# The demos need only the project: no development tools, and no pip upgrade (for --group).
$(DEMO_STAMP): pyproject.toml
	if [ ! $(STAMP) -nt pyproject.toml ]; then \
		$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --editable . ; \
	fi
	touch $(DEMO_STAMP)

test: lint typecheck pytest docs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The documentation site, strict (a broken link or a missing reference fails), offline.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

coverage: $(STAMP)
	$(BIN)/python -m coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m coverage report

demo: $(DEMO_STAMP)
	$(BIN)/python examples/service.py

demo-cohorts: $(DEMO_STAMP)
	$(BIN)/python examples/cohorts.py

demo-migration: $(DEMO_STAMP)
	$(BIN)/python examples/migration.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_decide.py

bench-stores: $(STAMP)
	$(BIN)/python benchmarks/bench_stores.py

bench-fleet: $(STAMP)
	$(BIN)/python benchmarks/bench_fleet.py

bench-patterns: $(STAMP)
	$(BIN)/python benchmarks/bench_patterns.py

# Golden cohort vectors from the vendors' own SDKs (test data: the SDKs are never a
# dependency of stagedroll, not even a development one; see tests/data/vendors/README.md).
VENDORS_VENV ?= /tmp/stagedroll-vendors
vendor-vectors:
	$(PYTHON) -m venv $(VENDORS_VENV)
	$(VENDORS_VENV)/bin/python -m pip install --quiet -r tests/data/vendors/requirements.txt
	$(VENDORS_VENV)/bin/python tests/data/vendors/generate.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage build dist
