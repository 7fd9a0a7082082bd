"""Debian packages a benchmark installs when a tool it compares against is missing."""

from __future__ import annotations

import os
import shutil
import subprocess

from bench.results import SetupError, log


def ensure_tool(tool: str, package: str, extra: list[str] | None = None) -> None:
    """Install Debian's `package` (no recommends) if `tool` is missing; SetupError on failure."""
    if shutil.which(tool):
        return
    pkgs = [package, *(extra or [])]
    log(f"{tool} is missing: apt-get install -y --no-install-recommends {' '.join(pkgs)}")
    r = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *pkgs],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
    )
    if r.returncode != 0 or not shutil.which(tool):
        raise SetupError(
            f"could not install {' '.join(pkgs)} for {tool}: {(r.stderr or r.stdout)[-1500:]}"
        )
