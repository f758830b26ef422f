# The two commands of the README:
#   make run    - the main job on embedded defaults (CPU, bundled samples, local Prefect server)
#   make test   - lint, format check and the test suite
# Each bootstraps .venv from the pinned lock first.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: run test bootstrap lint

bootstrap:
	@./scripts/bootstrap.sh

run: bootstrap
	$(VENV)/python -m flows.pipeline

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

test: lint
	@./scripts/ensure_chromium.sh  # headless browser for the report test (apt, once, as root)
	# two workers, each test module on one (module fixtures are set up once); each worker and
	# what it starts runs one torch thread (tests/conftest.py)
	PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(VENV)/python -m pytest -p anyio -p xdist -n 2 --dist loadscope -q
