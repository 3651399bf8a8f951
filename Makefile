# Quick start: `make run` (serve the sim market on http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HOST PORT

.PHONY: run test migrate lint venv dev pglite web bench clean docs

# PGlite (PostgreSQL 17 + TimescaleDB in WebAssembly) for the TimescaleDB half of the storage tests.
PGLITE := tests/support/pglite/node_modules/.package-lock.json
# The chart page's and docs page's browser packages (lightweight-charts, swagger-ui-dist), served
# from our own origin: installed from web/package-lock.json.
WEB := web/node_modules/.package-lock.json

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# The development set (tests, checks, the benchmarks' other servers): `make test` and `make bench`.
dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

migrate: venv
	$(BIN)/quart --app app:create_app migrate

# serve.py serves app:create_app() under Uvicorn, the production server (SERVER=hypercorn or
# SERVER=granian for the others), with uvloop, the WebSocket heartbeat and frame-size settings
# and a 1001 close to WebSocket clients at Ctrl-C (docs/performance.md, "Choosing the server").
run: venv web migrate
	$(BIN)/python serve.py

docs: $(VENV)/.installed  # the settings table of docs/configuration.md, from config.py's declarations
	$(BIN)/python config.py docs/configuration.md

lint: dev
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/lint-imports  # pyproject.toml [tool.importlinter]: one-way layers, no cycles

$(PGLITE): tests/support/pglite/package-lock.json
	npm ci --prefix tests/support/pglite --no-audit --no-fund

pglite: $(PGLITE)

$(WEB): web/package-lock.json
	npm ci --prefix web --no-audit --no-fund

web: $(WEB)

test: dev lint pglite web
	APP_ENV=testing REQUIRE_TIMESCALE=1 $(BIN)/pytest -q -p no:cacheprovider

bench: dev pglite web
	$(BIN)/python -m bench.servers
	$(BIN)/python -m bench.ohlcv_rest
	$(BIN)/python -m bench.gateway
	$(BIN)/python -m bench.provider_path
	$(BIN)/python -m bench.aggregates
	$(BIN)/python -m bench.export
	$(BIN)/python -m bench.backfill
	$(BIN)/python -m bench.ws_fanout
	$(BIN)/python -m bench.chart_page
	$(BIN)/python -m bench.deadline

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
