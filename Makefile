# The README's two commands: `make demo` and `make test`.
TACC_STACK_PORT ?= 4200
export TACC_STACK_PORT
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo stack-down test

install:
	./scripts/bootstrap.sh

demo: install
	./scripts/stack.sh up
	PREFECT_API_URL=http://127.0.0.1:$(TACC_STACK_PORT)/api .venv/bin/python -m deployments.demo

stack-down:
	./scripts/stack.sh down

test: install
	.venv/bin/python -m pytest -q --durations=5
