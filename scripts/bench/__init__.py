"""What the benchmark scripts (scripts/bench_*.py) share, and bench_sandbox.py's parts.

results (timed samples, the markdown table, the errors that end a run, signal handling),
cleanup (destroy the run's sandboxes, prove nothing is left), host (load and other VMs, the
root check, the end-of-run error lines), memory (qemu RSS/PSS, MemAvailable), fluid_cli (the
real `fluid` CLI as a subprocess), tools (Debian packages installed on demand); sandbox/ holds
the parts of scripts/bench_sandbox.py. The scripts run as `python scripts/bench_X.py`, which
puts scripts/ on sys.path, so they import this package as `bench`. It imports fluid's infra
but never the scripts themselves.
"""
