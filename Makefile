# The README's two commands: `make demo` and `make test`.
TACC_STACK_PORT ?= 4200
export TACC_STACK_PORT
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install lock demo stack-down lint test test-fast

install:  # exactly the versions of uv.lock, into .venv
	./scripts/bootstrap.sh

lock:  # re-resolve uv.lock after a change to pyproject.toml's dependencies; commit it on its own
	./scripts/bootstrap.sh lock

demo: install
	./scripts/stack.sh up
	eval "$$(./scripts/stack.sh env)" && .venv/bin/python -m deployments.demo

stack-down:
	./scripts/stack.sh down

lint: install  # ruff, configured in pyproject.toml; `.venv/bin/ruff format .` and `ruff check --fix .` repair
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .

test: install  # the whole suite; the shared Slurm sandbox and PostgreSQL keep to one worker (tests/conftest.py)
	.venv/bin/python -m pytest -q -n 2 --dist loadgroup --durations=5

test-fast: install  # what needs no Slurm, PostgreSQL or Prefect server: about a minute
	.venv/bin/python -m pytest -q -n 2 -m "not (slurm or postgres or prefect or e2e or faults)"
