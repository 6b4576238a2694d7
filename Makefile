# Every target here is what CI and developers run, as is.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
DATA    ?= default.etcdgw
PYTEST_ARGS ?=

.PHONY: install install-dev proto lint typecheck test robustness run bench clean

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

# The whole check: lint, strict typing, then every test. pytest's exit status 5 means it ran no
# test: that is a failure here too (make fails on any non-zero status), and it says so.
test: lint typecheck
	$(PY) -m pytest -q $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest ran no tests (exit status 5)" >&2; fi; exit $$rc; }

# Longer robustness runs than `make test` does: every scenario of tests/robustness for
# ROBUSTNESS_SECONDS (default 120), one summary line each (ops, faults, verdict). A failing run
# names the JSON file its history was saved to. ROBUSTNESS_SEED=N repeats a run's choices.
robustness: install
	ROBUSTNESS_SECONDS=$${ROBUSTNESS_SECONDS:-120} $(PY) -m pytest -q -s -p no:cacheprovider \
	  tests/robustness/test_robustness.py $(PYTEST_ARGS)

run: install
	$(VENV)/bin/etcdgw serve --data-dir $(DATA) --listen-client-urls http://127.0.0.1:2379

bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
