# The README's commands. Each sets up the virtualenv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint migrations-check

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

# Development server: SQLite file and the offline echo provider unless told otherwise.
run: install
	DEBUG=$${DEBUG:-1} $(PY) manage.py migrate --noinput
	DEBUG=$${DEBUG:-1} $(PY) manage.py collectstatic --noinput --verbosity 0
	DEBUG=$${DEBUG:-1} $(VENV)/bin/gunicorn chatbot_project.wsgi \
		--bind $(HOST):$(PORT) --workers 2 --threads 8 --access-logfile -

# Tests run with DEBUG off, as in production; the key below signs test tokens only.
test: install
	SECRET_KEY=$${SECRET_KEY:-test-only-insecure-signing-key-0123456789abcdef} $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

migrations-check: install
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run
