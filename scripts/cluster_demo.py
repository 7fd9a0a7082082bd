"""`make cluster-demo`: two fluid hosts under one Prefect server, on this one machine.

Hosts `a` and `b` each have their own FLUID_HOST_ID, storage folder, port range, work queue,
worker and libvirt connection (b's goes through a relay this demo can cut); they share fluid's
store and the Prefect server, both on PostgreSQL, one CA and a published golden image, which
each host copies and verifies. The demo submits two auto-approved scripted agent tasks (placed
one on each host), kills host b mid-run (its worker and flow processes, and its libvirt link),
lets the cluster janitor on a mark b down, submits two more (placed on a), then brings b back
and lets b's own janitor remove what it lost. It prints one line per run,
`run <id> host <host> <outcome>`, and exits 0 only when every expectation holds.

    make cluster-demo        (as root, after `make setup`; builds the golden image if needed)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEMO = Path("/var/lib/fluid-cluster-demo")
FLUID = str(Path(sys.executable).with_name("fluid"))
PG = "fluid:fluid@127.0.0.1:5432"
STORE_DB, PREFECT_DB = "fluid_cluster_store", "fluid_cluster_prefect"
PRODUCTION = "cluster-demo"
LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"
RUN_TIMEOUT_S = 1200


def say(msg: str) -> None:
    print(f"cluster-demo: {msg}", flush=True)


def common_env() -> dict[str, str]:
    """What both hosts share: the store, the Prefect server, fluid's home (its CA)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUID_", "PREFECT_"))}
    return env | {
        "FLUID_HOME": str(DEMO / "home"),
        "FLUID_DATABASE_URL": f"postgresql+psycopg://{PG}/{STORE_DB}",
        "FLUID_PREFECT_PORT": "4310",
        "FLUID_SPARE_SANDBOXES": "0",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{PG}/{PREFECT_DB}",
    }


def host_env(host: str) -> dict[str, str]:
    """Host `host`'s environment: its id, storage, ports and libvirt connection."""
    ports = {"a": "[23000, 23199]", "b": "[23200, 23399]"}[host]
    env = common_env() | {
        "FLUID_HOST_ID": host,
        "FLUID_STORAGE_DIR": str(DEMO / host),
        "FLUID_PORT_RANGE": ports,
    }
    if host == "b":
        env["FLUID_LIBVIRT_URI"] = f"qemu+unix:///system?socket={DEMO / 'b-libvirt.sock'}"
    return env


def fluid(env: dict[str, str], *args: str, check: bool = True) -> str:
    """Run the `fluid` command in a host's environment; its stdout."""
    r = subprocess.run([FLUID, *args], env=env, cwd=REPO, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"cluster-demo: `fluid {' '.join(args)}` failed:\n{r.stderr[-3000:]}")
    return r.stdout


def psql(*commands: str) -> None:
    cmd = "psql -q " + " ".join(f'-c "{c}"' for c in commands)
    subprocess.run(["su", "postgres", "-c", cmd], check=True, capture_output=True)


def fresh_databases() -> None:
    for db in (STORE_DB, PREFECT_DB):
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", f"CREATE DATABASE {db} OWNER fluid")


def start_relay() -> subprocess.Popen[bytes]:
    sock = DEMO / "b-libvirt.sock"
    relay = subprocess.Popen(
        [sys.executable, str(REPO / "scripts/cluster/relay.py"), str(sock), LIBVIRT_SOCKET]
    )
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return relay


def processes_of(host: str) -> list[int]:
    """Pids of the processes working as `host` (its worker and its flow runs; not the Prefect
    server, which host a's `fluid server start` started in its own process group)."""
    try:
        server = int((DEMO / "home/prefect/server.pid").read_text())
    except (OSError, ValueError):
        server = None
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if server is not None and os.getpgid(int(proc.name)) == server:
                continue
        with contextlib.suppress(OSError):
            if f"\0FLUID_HOST_ID={host}\0".encode() in b"\0" + (proc / "environ").read_bytes():
                found.append(int(proc.name))
    return found


def kill_host(host: str, relay: subprocess.Popen[bytes]) -> None:
    """What a host's death looks like from outside: its processes and its link are gone."""
    for pid in processes_of(host):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    relay.kill()
    relay.wait()


class Demo:
    """The scenario, with the Prefect client pointed at the demo's server."""

    def __init__(self) -> None:
        from prefect.client.orchestration import get_client

        self.client = get_client(sync_client=True)
        self.host_of: dict[str, str] = {}
        self.number: dict[str, int] = {}
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        say(("ok: " if ok else "FAILED: ") + what)
        if not ok:
            self.failures.append(what)

    def submit(self, n: int) -> str:
        from orchestration import client

        fr = client.submit(
            {
                "task": f"cluster demo: note run {n}",
                "production": PRODUCTION,
                "agent": {
                    "kind": "scripted",
                    "steps": [
                        {"write": f"/etc/fluid-demo/run-{n}.conf", "content": f"run {n}\n"},
                        # Long enough for the demo to kill a host while the agent works.
                        {"run": "sleep 20"},
                    ],
                },
                "auto_approve": True,
                "max_attempts": 1,
            }
        )
        host = (fr.parameters or {})["host"]
        self.host_of[str(fr.id)] = host
        self.number[str(fr.id)] = n
        say(f"submitted run {n} ({fr.id}): placed on host {host}")
        return str(fr.id)

    def state(self, run_id: str) -> Any:
        from uuid import UUID

        return self.client.read_flow_run(UUID(run_id)).state

    def wait_final(self, run_id: str) -> Any:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            state = self.state(run_id)
            if state is not None and state.is_final():
                return state
            time.sleep(3)
        raise SystemExit(f"cluster-demo: run {run_id} did not end within {RUN_TIMEOUT_S} s")

    def wait_working(self, run_id: str) -> None:
        """Until the run's agent has its sandbox (the run recorded it)."""
        from infra.records import runs

        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            rec = runs.get(run_id)
            if rec is not None and rec.sandbox_id:
                return
            time.sleep(2)
        raise SystemExit(f"cluster-demo: run {run_id} never got a sandbox")

    def run_janitor(self, host: str) -> None:
        """Run `host`'s own janitor deployment now and wait for it."""
        from prefect.deployments import run_deployment

        fr = run_deployment(f"janitor/janitor-{host}", timeout=0)
        state = self.wait_final(str(fr.id))
        self.expect(state.is_completed(), f"host {host}'s janitor ran ({state.name})")

    def line(self, run_id: str) -> str:
        state = self.state(run_id)
        outcome = state.name if state is not None else "?"
        if state is not None and state.message and not state.is_completed():
            outcome += f": {state.message}"
        return f"run {run_id} host {self.host_of[run_id]} {outcome}"


def lost_sandboxes(host: str) -> dict[str, bool]:
    """`host`'s sandboxes marked lost (id → whether its VM still exists), read from the store
    and this machine's libvirt, which the demo's hosts share."""
    from sqlmodel import col, select

    from infra.host.libvirt_host import connection, lookup
    from infra.records import store
    from infra.records.store import SandboxRecord

    with store.session() as s:
        records = list(s.exec(select(SandboxRecord).where(col(SandboxRecord.host_id) == host)))
    with connection() as conn:
        return {r.id: lookup(conn, r.domain_name) is not None for r in records if r.lost}


def scenario(relay: subprocess.Popen[bytes]) -> list[str]:
    """The demo proper; the failed expectations."""
    from infra.records import hosts
    from orchestration import liveness

    demo = Demo()
    first, second = demo.submit(1), demo.submit(2)
    demo.expect(
        sorted(demo.host_of[r] for r in (first, second)) == ["a", "b"],
        "the first two runs were placed one on each host",
    )
    on_b = first if demo.host_of[first] == "b" else second
    on_a = second if on_b == first else first
    demo.wait_working(on_b)
    say("host b dies: its worker and flow processes are killed and its libvirt link cut")
    kill_host("b", relay)
    deadline = time.monotonic() + 120
    while liveness.workers()["b"].online and time.monotonic() < deadline:
        time.sleep(2)
    say("Prefect reports b's worker offline; the cluster janitor runs on host a")
    demo.run_janitor("a")
    state = demo.wait_final(on_b)
    demo.expect(
        state.is_crashed() and (state.message or "").startswith("host b is down"),
        f"b's run ended Crashed, saying why ({state.message})",
    )
    demo.expect(hosts.get("b").state == "down", "host b is marked down")
    lost = lost_sandboxes("b")
    demo.expect(
        bool(lost) and all(alive for alive in lost.values()),
        f"b's sandbox {sorted(lost)} is marked lost and still there: a's janitor left it alone",
    )
    later = [demo.submit(3), demo.submit(4)]
    demo.expect(all(demo.host_of[r] == "a" for r in later), "later runs were placed on a")
    for run_id in (on_a, *later):
        state = demo.wait_final(run_id)
        demo.expect(state.is_completed(), f"run {run_id} on a was applied ({state.name})")
    for run_id in (first, second, *later):
        print(demo.line(run_id), flush=True)

    written = fluid(host_env("a"), "production", "exec", PRODUCTION, "--", "ls", "/etc/fluid-demo")
    expected = {f"run-{demo.number[r]}.conf" for r in (on_a, *later)}
    demo.expect(set(written.split()) == expected, f"production holds {sorted(expected)}")

    say("host b comes back: its link and worker return, its own janitor runs")
    relay = start_relay()
    fluid(host_env("b"), "worker", "start", "--host", "b")
    demo.expect(hosts.get("b").state == "ready", "host b is ready again")
    demo.run_janitor("b")
    leftovers = json.loads(fluid(host_env("b"), "sandbox", "list", "--json"))["sandboxes"]
    demo.expect(leftovers == [], "b's janitor removed the sandbox it lost")
    relay.kill()
    return demo.failures


def setup() -> subprocess.Popen[bytes]:
    """Fresh databases and folders, the published image on both hosts, the server, the two
    workers and the production VM; the relay of b's libvirt link."""
    if DEMO.exists():
        say("removing what an earlier demo left")
        teardown()
    fresh_databases()
    (DEMO / "home").mkdir(parents=True, mode=0o700)
    # The golden image as `make image` built it, published to the cluster's catalog, then
    # copied to each host and verified.
    builder = common_env() | {"FLUID_HOST_ID": "builder"}
    fluid(builder, "image", "publish")
    source = "/var/lib/fluid"  # the builder's storage folder, as each host would mount it
    relay = start_relay()
    for host in ("a", "b"):
        fluid(host_env(host), "image", "sync", "debian-12", "--from", source)
    say("starting the Prefect server (on PostgreSQL) and host a's worker")
    fluid(host_env("a"), "server", "start")
    say("starting host b's worker")
    fluid(host_env("b"), "worker", "start", "--host", "b")
    say(f"creating the production VM {PRODUCTION} on host a")
    fluid(host_env("a"), "production", "create", PRODUCTION)
    return relay


def teardown() -> None:
    """Stop everything the demo started and remove its VMs and folders."""
    for host in ("a", "b"):
        for pid in processes_of(host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    relay = start_relay() if (DEMO / "b").exists() else None
    for host in ("a", "b"):
        # Every sandbox goes: its run ended or its process was killed above.
        fluid(host_env(host), "janitor", "--grace", "0", check=False)
        fluid(host_env(host), "pool", "clear", check=False)
    fluid(host_env("a"), "production", "destroy", PRODUCTION, check=False)
    fluid(host_env("a"), "server", "stop", check=False)
    if relay is not None:
        relay.kill()
    shutil.rmtree(DEMO, ignore_errors=True)


def main() -> int:
    started = time.monotonic()
    relay = None
    try:
        relay = setup()
        os.environ.clear()
        os.environ.update(host_env("a"))
        from orchestration import control_plane

        control_plane.use_prefect()
        failures = scenario(relay)
    finally:
        if relay is not None:
            relay.kill()
        say("tearing down: runs' sandboxes, the production VM, the server, the folders")
        teardown()
    if failures:
        say(f"{len(failures)} expectation(s) failed: " + "; ".join(failures))
        return 1
    took = time.monotonic() - started
    say(f"every expectation held ({took:.0f} s with set-up and teardown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
