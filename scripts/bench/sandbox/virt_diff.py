"""libguestfs' virt-diff, part C's comparison: installed on demand, its appliance built once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.results import SetupError, log
from bench.tools import ensure_tool

VIRT_DIFF_TIMEOUT_S = 1800.0
LIBGUESTFS_ENV = {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}


def ensure_virt_diff() -> None:
    """libguestfs-tools for the comparison only; its appliance needs a kernel in /boot."""
    if shutil.which("virt-diff"):
        return
    print(
        "warning: installing Debian's libguestfs-tools (and linux-image-amd64, which libguestfs "
        "recommends: supermin builds its appliance from the kernel in /boot) for the virt-diff "
        "comparison; this installs a kernel and rewrites the host's initrd. "
        "`apt-get purge libguestfs-tools linux-image-amd64 && apt-get autoremove` undoes it.",
        file=sys.stderr,
        flush=True,
    )
    ensure_tool("virt-diff", "libguestfs-tools", ["linux-image-amd64"])


def warm_up_libguestfs(env: dict[str, str]) -> None:
    """Build libguestfs' cached appliance once, untimed, so virt-diff is timed warm."""
    cache = Path("/var/tmp") / f".guestfs-{os.getuid()}" / "appliance.d"
    if cache.is_dir():
        return
    log("libguestfs: first use, building its appliance (untimed)")
    start = time.perf_counter()
    r = subprocess.run(
        ["guestfish", "--ro", "-a", "/dev/null", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=VIRT_DIFF_TIMEOUT_S,
    )
    if r.returncode != 0:
        raise SetupError(
            f"libguestfs cannot start its appliance: {r.stderr.strip()[-1500:]}; "
            "`libguestfs-test-tool` shows why"
        )
    log(f"libguestfs appliance ready in {time.perf_counter() - start:.1f} s")
