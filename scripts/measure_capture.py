#!/usr/bin/env python3
"""Capture a sandbox in this fresh process and print its time and its own peak memory as JSON.

    measure_capture.py SANDBOX [--checkpoint NAME] [--path GUEST_PATH]

fluid's modules are loaded and an SSH connection made first; then the peak resident set is
reset (`/proc/self/clear_refs` 5 resets VmHWM), so VmHWM afterwards is the capture's own peak
and `growth` (VmHWM minus VmRSS just before) what the capture added. With --path, `stored`
says whether that file's content reached the blob store. Used by scripts/bench_change.py and
tests/infra/state/test_large_files.py, so both measure the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from infra.machines import sandboxes
from infra.settings import FluidSettings, environment
from infra.state import capture
from infra.state.base import kinds

SCRIPT = Path(__file__).resolve()


def status(field: str) -> int:
    """A /proc/self/status memory field, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(sandbox: str, checkpoint: str | None, path: str | None) -> dict:
    """One capture of `sandbox` in this process: seconds, peak RSS, growth, and `stored`."""
    settings = FluidSettings()
    kinds()
    with sandboxes.guest(sandbox, settings) as g:
        g.run("true")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    t = time.perf_counter()
    cap = capture.capture(sandbox, checkpoint=checkpoint, settings=settings)
    seconds = time.perf_counter() - t
    peak = status("VmHWM")
    got: dict = {"seconds": seconds, "rss_before": before, "peak": peak, "growth": peak - before}
    if path:
        entry = cap.state("files").entries.get(path)
        got["stored"] = bool(entry and capture.blob_store(settings).has(entry.sha256))
    return got


def measured_capture(
    sandbox: str,
    settings: FluidSettings,
    *,
    checkpoint: str | None = None,
    path: str | None = None,
    timeout: float = 1800,
) -> dict:
    """Run this script for `sandbox` in a child Python; its JSON (raises on failure)."""
    args = [sys.executable, str(SCRIPT), sandbox]
    args += ["--checkpoint", checkpoint] if checkpoint else []
    args += ["--path", path] if path else []
    r = subprocess.run(
        args, env=environment(settings), capture_output=True, timeout=timeout, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"the measured capture failed:\n{r.stderr.decode()[-3000:]}")
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sandbox")
    parser.add_argument("--checkpoint")
    parser.add_argument("--path")
    a = parser.parse_args()
    print(json.dumps(measure(a.sandbox, a.checkpoint, a.path)))


if __name__ == "__main__":
    main()
