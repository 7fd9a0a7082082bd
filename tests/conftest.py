"""Shared fixtures: a private FLUID_HOME, the golden image, and sandboxes shared by a module."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlmodel import select

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Prefect's own home (its profiles.toml, which `fluid server start` writes a profile into) is
# the session's, never the developer's ~/.prefect. Set before Prefect is imported: it reads
# its settings once.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="fluid-test-prefect-home-")
os.environ.pop("PREFECT_PROFILES_PATH", None)
os.environ.pop("PREFECT_PROFILE", None)

import contextlib

from infra.errors import GuestDataRefused  # noqa: E402
from infra.host import images
from infra.host.libvirt_host import connect, lookup  # noqa: E402
from infra.machines import checkpoints, sandbox_records, sandboxes, spares  # noqa: E402
from infra.records import store
from infra.settings import FluidSettings, get_settings  # noqa: E402
from infra.state import capture  # noqa: E402
from infra.state.base import ChangeSet  # noqa: E402
from infra.state.diff import compare  # noqa: E402
from orchestration import control_plane

FLUID = str(Path(sys.executable).with_name("fluid"))
ROOT = Path(__file__).resolve().parent.parent
# Unique per session: a production VM outlives a killed session (it has no TTL), and the next
# session, or another developer's on the same host, must not collide with it.
PRODUCTION_NAME = f"t-prod-{os.urandom(3).hex()}"
PRODUCTION_ADDRESS = "127.0.0.2"


# CI stops a run at 90 minutes, set-up included, and then prints no summary. Past this budget
# every test left fails at once, saying so, and the summary still names the earlier failures.
SUITE_BUDGET_S = 80 * 60
SESSION_STARTED = time.monotonic()


def pytest_runtest_setup(item: pytest.Item) -> None:
    spent = time.monotonic() - SESSION_STARTED
    if spent > SUITE_BUDGET_S:
        pytest.fail(
            f"not run: the suite has used {spent / 60:.0f} of its {SUITE_BUDGET_S // 60} "
            "minutes (CI's limit is 90, set-up included); make the slow tests faster",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def fluid_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session gets its own database and CA; images are shared with the host."""
    home = tmp_path_factory.mktemp("fluid-home")
    os.environ["FLUID_HOME"] = str(home)
    # No spares started behind the tests' backs (they hold slots and count as domains);
    # tests/infra/machines/test_spares.py turns them on where it means to.
    os.environ["FLUID_SPARE_SANDBOXES"] = "0"
    # Production VMs listen where other hosts would reach them: another loopback address than
    # sandboxes' 127.0.0.1, so the tests show nothing assumes 127.0.0.1 for production.
    os.environ["FLUID_PRODUCTION_ADDRESS"] = PRODUCTION_ADDRESS
    # The session's own Prefect server, so a developer's server on 4200 is never touched.
    os.environ["FLUID_PREFECT_PORT"] = str(free_port())
    os.environ.pop("PREFECT_API_URL", None)
    # Replays and applies run under Mitogen's strategy (the `mitogen` extra the test command
    # installs): under TCG Ansible's linear strategy starts a Python per task and takes over
    # twice as long, which the CI budget cannot carry for every replay. Ansible's default runs
    # on VMs where users meet it: the Prefect UI approval run (replay, preview and apply, in
    # tests/flows/test_agent_task.py); tests/infra/ansible/test_strategy.py checks the default.
    os.environ["FLUID_ANSIBLE_STRATEGY"] = "mitogen"
    get_settings.cache_clear()
    return home


@pytest.fixture(scope="session", autouse=True)
def warm_slots_removed(fluid_home: Path) -> Iterator[None]:
    """The session's spares and warm-start slots (saved VMs under the shared storage dir) go
    at its end."""
    yield
    from infra.machines import spares, warm_slots

    spares.clear(FluidSettings())  # first: each holds a slot
    warm_slots.clear(FluidSettings())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def host_service() -> Iterator[int]:
    """A TCP service on the host's 127.0.0.1 (like the Prefect API or a database); its port.
    The test fails if a connection reaches it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted: list[bool] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(True)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    assert not accepted, "a sandbox connection reached the host service"


@pytest.fixture(scope="session")
def prefect_stack(fluid_home: Path) -> Iterator[control_plane.ControlPlane]:
    """fluid's real control plane for the session: Prefect server (with its auth string), the
    work pool, fluid's deployments and a process worker, as `fluid run` starts them."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = FluidSettings()
    cp = control_plane.ensure_running(settings)
    os.environ.update(cp.client_env())  # for the CLIs the tests start
    try:
        with temporary_settings(
            {
                PREFECT_API_URL: cp.api_url,
                PREFECT_API_AUTH_STRING: cp.auth_string.get_secret_value(),
            }
        ):
            without_the_weekly_rebuild()
            yield cp
    finally:
        control_plane.stop(settings)


def without_the_weekly_rebuild() -> None:
    """The session's server keeps prefect.yaml's golden-image schedule but not active: once, a
    suite running over Sunday 03:00 UTC rebuilt the host's golden image in the middle of it
    (a new newest version, and the VMs' CPU gone to debootstrap)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("golden-image/golden-image")
        for schedule in deployment.schedules:
            # Prefect deletes the runs the schedule already made for later times.
            client.update_deployment_schedule(deployment.id, schedule.id, active=False)


def fresh_postgres_database(name: str) -> str:
    """A new, empty PostgreSQL database on loopback (FLUID_TEST_POSTGRES_URL wins if set)."""
    import shutil

    url = os.environ.get("FLUID_TEST_POSTGRES_URL")
    if url:
        return url
    if not shutil.which("pg_lsclusters"):
        pytest.fail("PostgreSQL is not installed: run scripts/setup-postgres.sh")
    subprocess.run(
        [
            "su",
            "postgres",
            "-c",
            f'psql -q -c "DROP DATABASE IF EXISTS {name}" -c "CREATE DATABASE {name}"',
        ],
        check=True,
        capture_output=True,
    )
    return f"postgresql+psycopg://fluid:fluid@127.0.0.1:5432/{name}"


@pytest.fixture(scope="session")
def settings(fluid_home: Path) -> FluidSettings:
    return FluidSettings()


@pytest.fixture(scope="session")
def golden_image(settings: FluidSettings) -> images.ImageManifest:
    """The default golden image, built once if the host has none (cached by its inputs)."""
    return images.build(progress=None, settings=settings)


def fluid(
    *args: str, check: bool = True, timeout: float = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the real `fluid` command line of this checkout (`env` added to the environment);
    stdout and stderr as bytes."""
    full = {**os.environ, **(env or {})}
    # The console script imports `cli` from sys.path, where PYTHONPATH comes before the
    # checkout the venv was installed from: the command runs the code under test.
    full["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), full.get("PYTHONPATH"))))
    r = subprocess.run([FLUID, *args], capture_output=True, timeout=timeout, env=full)
    if check and r.returncode != 0:
        raise AssertionError(f"fluid {' '.join(args)} exited {r.returncode}: {r.stderr!r}")
    return r


def fluid_json(*args: str) -> dict:
    """Run `fluid ... --json` and parse the one JSON object it prints."""
    return json.loads(fluid(*args, "--json").stdout)


def run_ok(sandbox_id: str, command: str, settings: FluidSettings, *, timeout: float) -> str:
    """`command` run as root in the sandbox (output capped at 1 MiB), which must exit 0; its
    stdout."""
    r = sandboxes.run(sandbox_id, command, timeout=timeout, output_cap=1 << 20, settings=settings)
    assert r.exit_status == 0, r.stderr_text
    return r.stdout_text


@contextlib.contextmanager
def captured_sandbox(
    sandbox_id: str, checkpoint: str, settings: FluidSettings
) -> Iterator[sandboxes.Sandbox]:
    """A new sandbox with a first (trusted) capture, `checkpoint`, taken while only fluid has
    run in it; destroyed afterwards."""
    made = sandboxes.create(sandbox_id, settings=settings)
    try:
        capture.capture(sandbox_id, checkpoint=checkpoint, trusted=True, settings=settings)
        yield made
    finally:
        sandboxes.destroy(sandbox_id, settings)


@contextlib.contextmanager
def changed_sandbox(
    sandbox_id: str,
    steps: str | Sequence[str],
    settings: FluidSettings,
    *,
    prepare: str | None = None,
    timeout: float = 900,
) -> Iterator[ChangeSet]:
    """A new sandbox checkpointed "before" and "after" the agent's `steps` (each one command,
    seconds apart, as an agent runs them; each must exit 0), the ChangeSet between the two;
    the sandbox is destroyed afterwards. `prepare` runs before the "before" checkpoint."""
    sandboxes.create(sandbox_id, settings=settings)
    try:
        if prepare:
            run_ok(sandbox_id, prepare, settings, timeout=timeout)
        checkpoints.create(sandbox_id, "before", settings)
        for step in [steps] if isinstance(steps, str) else steps:
            run_ok(sandbox_id, step, settings, timeout=timeout)
        checkpoints.create(sandbox_id, "after", settings)
        yield compare(
            capture.load(sandbox_id, "before", settings),
            capture.load(sandbox_id, "after", settings),
            settings=settings,
        )
    finally:
        sandboxes.destroy(sandbox_id, settings)


def assert_ansible_syntax(playbook: Path, cwd: Path) -> None:
    """ansible-playbook --syntax-check accepts the playbook's site.yml (run in `cwd`)."""
    r = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "--syntax-check",
            "-i",
            "nowhere,",
            str(playbook / "site.yml"),
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def capture_writes(settings: FluidSettings) -> dict[str, tuple[int, int]]:
    """Every file a capture writes on the host (blobs and their parts, captures, memories, the
    hash index), with its size and mtime."""
    roots = [settings.home / "blobs", settings.home / "captures", settings.cache_dir / "hash-index"]
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for root in roots
        if root.is_dir()
        for p in root.rglob("*")
        if p.is_file()
    }


def refused_capture(sandbox_id: str, settings: FluidSettings, match: str) -> GuestDataRefused:
    """A capture that must be refused whole, leaving no file written and no checkpoint's
    capture; the error."""
    # A spare refill (started in the background by an earlier create) captures its baseline
    # into the same blob store: wait it out and keep the next from starting meanwhile.
    with spares.fill_lock(settings, wait=True):
        before = capture_writes(settings)
        with pytest.raises(GuestDataRefused, match=match) as info:
            capture.capture(sandbox_id, checkpoint="refused", settings=settings)
        assert capture_writes(settings) == before, "a refused capture wrote something"
    with pytest.raises(capture.CaptureNotFound):
        capture.load(sandbox_id, "refused", settings)
    return info.value


def leftovers(sandbox_id: str, settings: FluidSettings) -> list[str]:
    """Everything still left of a sandbox: domain, disks, console log, records."""
    from infra.host import domains

    found = []
    conn = connect(settings)
    try:
        # A warm sandbox's domain is named after its slot; fluid's metadata names the sandbox.
        if lookup(conn, sandbox_records.domain_name(sandbox_id)) is not None or any(
            meta.id == sandbox_id for _dom, meta in domains.fluid_domains(conn, "sandbox")
        ):
            found.append("domain")
    finally:
        conn.close()
    for p in settings.disks_dir.glob(f"{sandbox_id}.*"):
        found.append(str(p))
    if (settings.logs_dir / f"{sandbox_id}.console.log").exists():
        found.append("console log")
    with store.session(settings) as s:
        if s.get(store.SandboxRecord, sandbox_id) is not None:
            found.append("sandbox row")
        rows = s.exec(
            select(store.CheckpointRecord).where(store.CheckpointRecord.sandbox_id == sandbox_id)
        ).all()
        if rows:
            found.append(f"{len(rows)} checkpoint rows")
    return found


@pytest.fixture(scope="module")
def two_sandboxes(
    golden_image: images.ImageManifest, settings: FluidSettings
) -> Iterator[tuple[sandboxes.Sandbox, sandboxes.Sandbox]]:
    """A `nat` and an `isolated` sandbox running at the same time (booted in parallel)."""
    names = {"nat": "t-nat", "isolated": "t-iso"}
    with ThreadPoolExecutor(2) as pool:
        futures = {
            mode: pool.submit(sandboxes.create, name, network=mode, settings=settings)
            for mode, name in names.items()
        }
        try:
            boxes = {mode: f.result() for mode, f in futures.items()}
            yield boxes["nat"], boxes["isolated"]
        finally:
            for name in names.values():
                with contextlib.suppress(Exception):
                    sandboxes.destroy(name, settings)


@pytest.fixture(scope="session")
def agent_box(
    golden_image: images.ImageManifest, settings: FluidSettings
) -> Iterator[sandboxes.Sandbox]:
    """One sandbox shared by the agent-tool, shell, LLM and MCP tests (each boot costs a
    minute under TCG). Tests work under their own folders and never rely on another's state."""
    # A generated id: a developer may run two test sessions on one host at once.
    box = sandboxes.create(agent_id="t-agent", settings=settings)
    try:
        yield box
    finally:
        sandboxes.destroy(box.id, settings)


@pytest.fixture(scope="session")
def production_vm(
    prefect_stack: control_plane.ControlPlane, golden_image: images.ImageManifest
) -> Iterator[dict]:
    """One production VM for the session, made by `fluid production create NAME --json` (which
    also saves its ProductionTarget block). tests/infra/machines/test_production.py destroys it
    at its end."""
    try:
        yield fluid_json("production", "create", PRODUCTION_NAME)
    finally:
        fluid("production", "destroy", PRODUCTION_NAME, check=False)


# The session's Prefect home (set at the top, before any import) goes with the session.
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)
