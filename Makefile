# The README's two commands: `make dev` (bring it all up) and `make test`.
# Both set up the virtualenv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The UI's port for `make dev` (e.g. `make dev PORT=3100`).
PORT ?= 3000
# Workers for the whole suite: most tests wait on the processes they start (servers,
# runs, a browser), so more workers than this machine's 2 cores keep both busy. Tests
# of one file share a worker (their deployment or browser is the file's).
TEST_WORKERS ?= 3
# What `make test-fast` leaves out: tests that need a database, a process of their own,
# a browser or a deployment.
FAST := not database and not processes and not browser and not deployment and not slow and not container and not fleet
# Where the container tests' Docker daemon keeps its socket (jobs_pipeline_tests/support/docker_host.py).
DOCKER_SOCKET := unix:///var/lib/jobs-pipeline-docker/docker.sock

.PHONY: dev test test-fast test-containers test-under-load lint format install constraints clean

# uv installs the pinned set (constraints.txt) in seconds where pip takes minutes.
$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==0.13.9
	$(BIN)/uv pip install --quiet --python $(BIN)/python --constraint constraints.txt -e '.[dev]'
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

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not container"

# Every test that needs no database, no process, no browser and no deployment: the
# loop to run while changing the code (well under a minute).
test-fast: $(INSTALLED)
	$(BIN)/pytest -m "$(FAST)"

# The image built from the Dockerfile and run under Docker: a Docker daemon and a base image
# made on this machine first (Debian's docker.io, debootstrap and docker-compose; about 5 minutes the
# first time, nothing after). Not yet part of `make test`.
test-containers: $(INSTALLED)
	$(BIN)/python -m jobs_pipeline_tests.support.docker_host
	DOCKER_HOST=$(DOCKER_SOCKET) $(BIN)/pytest -m container

# The suite with both cores held busy by two loops beside it, as on a shared CI machine:
# every wait is for a condition, so it must pass all the same, only slower.
test-under-load: lint
	@busy() { while :; do :; done; }; busy & one=$$!; busy & two=$$!; \
	trap 'kill $$one $$two' EXIT INT TERM; $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not container"

# The pinned set, refreshed from pyproject.toml's ranges in a virtualenv of its own.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet uv==0.13.9
	.venv-constraints/bin/uv pip install --quiet --python .venv-constraints/bin/python -e '.[dev]'
	{ echo "# Every package the project and its tools install, pinned: make constraints"; \
	  .venv-constraints/bin/uv pip freeze --python .venv-constraints/bin/python \
	  --exclude-editable; } > constraints.txt
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) .jobs-pipeline
