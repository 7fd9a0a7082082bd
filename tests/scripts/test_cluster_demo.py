"""`make cluster-demo` holds: two hosts on PostgreSQL, runs placed on both, host b killed
mid-run and marked down by the cluster janitor on a, its run Crashed with the reason, later runs
placed on a and applied, b's lost sandbox left alone by a and removed by b's own janitor when it
returns, and nothing of the demo left behind. Real VMs, workers, Prefect server and PostgreSQL.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.host.libvirt_host import connect
from tests.repo import ROOT

pytestmark = pytest.mark.vm

LINE = re.compile(r"^run ([0-9a-f-]{36}) host (a|b) (.*)$", re.MULTILINE)


def domains() -> set[str]:
    conn = connect()
    try:
        return {d.name() for d in conn.listAllDomains()}
    finally:
        conn.close()


@pytest.mark.timeout(1800)
def test_the_cluster_demo_survives_a_dead_host_and_leaves_nothing() -> None:
    before = domains()

    demo = subprocess.run(
        [sys.executable, str(ROOT / "scripts/cluster_demo.py")],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )

    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    runs = LINE.findall(demo.stdout)
    assert len(runs) == 4
    on_b = [outcome for _id, host, outcome in runs if host == "b"]
    on_a = [outcome for _id, host, outcome in runs if host == "a"]
    assert len(on_b) == 1 and on_b[0].startswith("Crashed: host b is down: its worker (fluid-b)")
    assert on_a == ["Completed"] * 3
    assert "FAILED" not in demo.stdout
    assert not Path("/var/lib/fluid-cluster-demo").exists()
    assert domains() <= before
