# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export QWED_QUIET := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: venv demo test lint typecheck pytest notebooks docs docs-serve docs-screenshot dist dist-check \
	services-install services services-stop bench bench-quick chaos clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,docs,notebooks,bench,fleet]'
	touch $(STAMP)

venv: $(STAMP)

# `make demo METRICS=9464` also serves the run's Prometheus metrics on 127.0.0.1:9464.
METRICS ?=
demo: $(STAMP)
	$(BIN)/qwed-guard demo $(if $(METRICS),--metrics $(METRICS) --pace 30)

lint: $(STAMP)
	$(BIN)/ruff check qwed_guard tests scripts docs/hooks $(wildcard benchmarks)
	$(BIN)/ruff format --check qwed_guard tests scripts docs/hooks $(wildcard benchmarks)

typecheck: $(STAMP)
	$(BIN)/mypy --strict qwed_guard

# The Redis and PostgreSQL tests start private servers from the Debian binaries.
pytest: $(STAMP) services-install
	$(BIN)/pytest -q

notebooks: $(STAMP)
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		$(BIN)/pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=120 notebooks; \
	else echo "no notebooks yet"; fi

# The documentation site, into site/; --strict: a broken link or reference fails the build
# (not --quiet: it hides the warnings that strict mode counts).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

docs-screenshot: docs
	bash scripts/screenshot_docs.sh

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# Wheel and sdist into dist/.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist . >/dev/null
	@ls dist

# The wheel in a clean venv outside the checkout: the command, `python -m`, a notebook.
dist-check: dist
	PYTHON=$(PYTHON) bash scripts/check_dist.sh dist

test: lint typecheck pytest notebooks docs dist-check

# Benchmarks against tenacity, backoff, stamina and loguru (not part of `make test`).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

# The production policy under the simulator's worst, 3 x 10,000 calls (not part of `make test`).
chaos: $(STAMP)
	$(BIN)/python -m benchmarks.chaos

# Debian's redis-server and postgresql, when missing (the tests start their own servers).
services-install:
	bash scripts/services.sh install

# Local Redis and PostgreSQL on 127.0.0.1 for the fleet benchmarks (installed if missing).
services:
	bash scripts/services.sh start

services-stop:
	bash scripts/services.sh stop

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache site dist build
