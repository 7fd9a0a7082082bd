#!/usr/bin/env bash
# make demo: the whole product on this machine. An agent installs nginx and a hello page in a
# sandbox; fluid turns the change into a playbook, proves it on a fresh clone, waits for your
# approval in the Prefect UI (or `fluid approve RUN`, which shows the change and the playbook's
# digest and asks; `--digest D` confirms without asking), applies it to the production VM
# `demo` and prints the page production now serves. FLUID_AUTO_APPROVE=1 approves without you.
set -euo pipefail
cd "$(dirname "$0")/.."
fluid=.venv/bin/fluid
step() { printf '\n== %s\n' "$*"; }

step "local Prefect server, worker and deployments"
$fluid server start

step "production VM 'demo' (a full copy of the golden image; it stays after the demo)"
$fluid production start demo 2>/dev/null || $fluid production create demo

step "agent task: install nginx and serve a hello page"
set +e
$fluid run "install nginx and serve a hello page" --steps examples/hello-nginx.yaml --production demo
code=$?
set -e
if [ "$code" -ne 0 ]; then
  echo "the run was not applied (exit $code); production is unchanged"
  exit "$code"
fi

step "the page production serves now"
$fluid production exec demo -- python3 -c \
  'import urllib.request; print(urllib.request.urlopen("http://localhost/").read().decode())'
echo "production VM 'demo' stays: fluid production exec demo -- ... ; fluid production destroy demo"
echo "Prefect UI: $($fluid server status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ui_url"])')"
