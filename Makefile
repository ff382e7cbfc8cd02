# The README's two commands: `make demo` and `make test`.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test

install:
	./scripts/bootstrap.sh

demo: install
	.venv/bin/python -m deployments.demo

test: install
	.venv/bin/python -m pytest -q --durations=5
