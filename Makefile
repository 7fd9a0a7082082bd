# The two commands of the README, and their parts.
.PHONY: demo test setup image lint bench cluster-demo

setup:
	bash scripts/setup-host.sh

image: setup
	.venv/bin/fluid image build

demo: image
	bash scripts/demo.sh

lint: setup
	.venv/bin/ruff check .

test: setup
	bash scripts/setup-postgres.sh
	.venv/bin/fluid image build
	.venv/bin/ruff check .
	.venv/bin/pytest

bench: image
	.venv/bin/python scripts/bench_sandbox.py

cluster-demo: image
	bash scripts/setup-postgres.sh
	.venv/bin/python scripts/cluster_demo.py
