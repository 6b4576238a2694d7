# Every target here is what CI and developers run, as is.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
DATA    ?= default.etcdgw
PYTEST_ARGS ?=

.PHONY: install install-dev proto lint typecheck test run bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)
	$(PIP) install -q -e '.[test,dev]'

proto: install
	$(PY) -m etcdgw._protogen

lint: install
	$(VENV)/bin/ruff check etcdgw tests bench

typecheck: install
	$(VENV)/bin/mypy

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

run: install
	$(VENV)/bin/etcdgw serve --data-dir $(DATA) --listen-client-urls http://127.0.0.1:2379

bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
