#!/usr/bin/env bash
# A tour of a sandbox: create, run as root, checkpoint, break, restore, fork, destroy.
set -euo pipefail
cd "$(dirname "$0")/.."
fluid=.venv/bin/fluid
id="demo-$(date +%s)"
cleanup() { $fluid sandbox destroy "$id-fork" >/dev/null 2>&1 || true
            $fluid sandbox destroy "$id" >/dev/null 2>&1 || true; }
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "create sandbox $id (a linked clone of the golden image)"
$fluid sandbox create --name "$id"
step "run commands in it as root, over SSH with a 5-minute certificate"
$fluid sandbox exec "$id" -- 'echo "Hello from fluid" > /root/hello; uname -sr; id -un'
step "checkpoint it, then break something"
$fluid sandbox checkpoint "$id" clean
$fluid sandbox exec "$id" -- 'rm -f /usr/bin/apt-get /root/hello; ls /usr/bin/apt-get || true'
step "restore the checkpoint: the damage is gone"
$fluid sandbox restore "$id" clean
$fluid sandbox exec "$id" -- 'ls -l /usr/bin/apt-get; cat /root/hello'
step "fork a second sandbox from the checkpoint"
$fluid sandbox fork "$id" clean --name "$id-fork"
$fluid sandbox exec "$id-fork" -- 'cat /root/hello; hostname'
$fluid sandbox list
step "destroy both: nothing is left behind"
$fluid sandbox destroy "$id-fork"
$fluid sandbox destroy "$id"
$fluid sandbox list
