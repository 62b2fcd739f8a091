# fedkit — the two commands of the README:
#   make demo   set up a fresh machine and run the main job (the quickstart study + its report)
#   make test   set up and run the default test suite (everything not marked slow)
VENV ?= .venv
PY := $(VENV)/bin/python
export FEDKIT_DATA ?= $(abspath ../shared/data)

.PHONY: setup demo test test-all lint mutation

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $@

demo: setup
	VENV=$(VENV) bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-all: setup
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

# Mutation testing of the maths modules with mutmut (NOT part of `make test`; docs/mutation.md).
# The modules and the tests run against them are in pyproject.toml's [tool.mutmut]. Limit a run
# with MUTANTS (mutmut name globs), e.g.  make mutation MUTANTS='fedkit.server_opt.* fedkit.aggregate.*'
# Results are cached in mutants/ (delete it to start over); the score table is printed at the end.
MUTANTS ?=
MUTATION_JOBS ?= 2
mutation: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(PY) scripts/mutation_score.py --survivors
