"""The real `fluid` CLI (.venv/bin/fluid) run as a subprocess, with the benchmark's settings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.results import BenchError
from infra.settings import FluidSettings

REPO = Path(__file__).resolve().parent.parent.parent
FLUID = REPO / ".venv" / "bin" / "fluid"
CLI_TIMEOUT_S = 900.0


def cli_env(settings: FluidSettings, warm: int | None, spares: int | None = None) -> dict[str, str]:
    """The benchmark's FLUID_HOME for the CLI; FLUID_WARM_SLOTS and FLUID_SPARE_SANDBOXES
    unset (defaults) or as given."""
    drop = {
        "FLUID_HOME",
        "FLUID_DATABASE_URL",
        "FLUID_CA_PRIVATE_KEY",
        "FLUID_WARM_SLOTS",
        "FLUID_SPARE_SANDBOXES",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["FLUID_HOME"] = str(settings.home)
    env["FLUID_STORAGE_DIR"] = str(settings.storage_dir)
    if warm is not None:
        env["FLUID_WARM_SLOTS"] = str(warm)
    if spares is not None:
        env["FLUID_SPARE_SANDBOXES"] = str(spares)
    return env


def fluid(
    args: list[str], env: dict[str, str], timeout: float = CLI_TIMEOUT_S, stream: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `fluid ARGS`; BenchError with its output when it fails."""
    r = subprocess.run(
        [str(FLUID), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=None if stream else subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise BenchError(
            f"`fluid {' '.join(args)}` exited {r.returncode}:\n{(r.stderr or '')[-1500:]}"
            f"{r.stdout[-500:]}"
        )
    return r
