# fedkit — the two commands of the README:
#   make demo   set up a fresh machine and run the main job (the quickstart study + its report)
#   make test   set up and run the default test suite (everything not marked slow)
VENV ?= .venv
PY := $(VENV)/bin/python
export FEDKIT_DATA ?= $(abspath ../shared/data)

.PHONY: setup demo test test-all lint

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
