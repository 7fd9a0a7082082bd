# The two commands of the README, and their parts.
.PHONY: demo test setup image lint bench cluster-demo lock

# The tests replay under Mitogen as well as Ansible's linear strategy (tests/conftest.py).
setup:
	bash scripts/setup-host.sh test,mitogen

# Regenerate constraints.txt (the pinned versions setup installs) after changing dependencies.
lock:
	bash scripts/lock.sh

image: setup
	.venv/bin/fluid image build

# Only what the demo needs: fluid without test extras, no Chromium.
demo:
	bash scripts/setup-host.sh none
	.venv/bin/fluid image build
	bash scripts/demo.sh

lint: setup
	.venv/bin/ruff check .

# COLUMNS: wide, so the failure summary CI shows keeps each failure's message.
test: setup
	bash scripts/setup-postgres.sh
	.venv/bin/fluid image build
	.venv/bin/ruff check .
	COLUMNS=250 .venv/bin/pytest

bench: image
	.venv/bin/python scripts/bench_sandbox.py

cluster-demo: image
	bash scripts/setup-postgres.sh
	.venv/bin/python scripts/cluster_demo.py
