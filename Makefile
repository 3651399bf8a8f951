# Quick start: `make run` (serve the sim market on http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HOST PORT

.PHONY: run test migrate lint venv pglite bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

migrate: venv
	$(BIN)/quart --app app:create_app migrate

run: venv migrate
	$(BIN)/hypercorn --bind $(HOST):$(PORT) 'app:create_app()'

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy .

test: venv lint
	APP_ENV=testing $(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
