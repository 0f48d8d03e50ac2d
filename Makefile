# The README's two commands: `make dev` (bring it all up) and `make test`.
# Both set up the virtualenv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The UI's port for `make dev` (e.g. `make dev PORT=3100`).
PORT ?= 3000

.PHONY: dev test test-under-load lint install clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED)

dev: $(INSTALLED)
	$(BIN)/jobs-pipeline dev --port $(PORT)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/vulture
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

# The suite with both cores held busy by two loops beside it, as on a shared CI machine:
# every wait is for a condition, so it must pass all the same, only slower.
test-under-load: lint
	@busy() { while :; do :; done; }; busy & one=$$!; busy & two=$$!; \
	trap 'kill $$one $$two' EXIT INT TERM; $(BIN)/pytest

clean:
	rm -rf $(VENV) .jobs-pipeline
