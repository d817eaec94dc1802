# Everyday commands. The fast lane skips tests marked `slow` (pyproject.toml); test-all is CI's.
PYTHON ?= python

.PHONY: test test-all lint format slurm-up slurm-down db-up db-down

test:  ## the fast lane: every module, no subprocess or multi-epoch tests (times: docs/performance.md)
	$(PYTHON) -m pytest

test-all:  ## the whole suite, slowest tests listed at the end (what CI runs)
	$(PYTHON) -m pytest -m "" --durations=25

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

slurm-up:  ## a one-machine SLURM cluster (apt install if needed; partition debug; config in .slurm/)
	bash tools/slurm.sh up

slurm-down:
	bash tools/slurm.sh down

db-up:  ## this clone's PostgreSQL server for stored Optuna studies (apt install if needed; data in .db/)
	bash tools/db.sh up

db-down:
	bash tools/db.sh down
