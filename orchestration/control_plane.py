"""fluid's local Prefect: one API server, a process worker per host and fluid's deployments.

Started on demand by `fluid run` (and `make demo`) when PREFECT_API_URL is not set, and left
running so the UI stays open and suspended runs can be resumed. The API requires an
authentication string that only fluid knows (a 0600 file under FLUID_HOME): nothing inside a
sandbox can reach or authenticate to it, so an agent cannot approve its own change. The
server's home (FLUID_HOME/prefect: its database, results, logs) is root's alone (0700), and
the server makes its files 0600 (umask 077).

Each hypervisor host runs one worker (`fluid worker start`), on its own work queue in fluid's
pool (`host-<id>`, infra/records/hosts.py) and on the pool's shared queue ("default", where
prefect.yaml's scheduled janitor and golden-image runs go): agent-task runs are placed on a
host's own queue (orchestration/placement.py), so only that host's worker takes them. One host
alone gets its worker and queue from `ensure_running`, with no set-up.

This module starts processes and speaks HTTP; it does not import Prefect.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from infra.host.identity import check, host_id
from infra.host.permissions import PRIVATE_FILE, private_dir, write_private
from infra.records import store
from infra.settings import FluidSettings, environment, get_settings
from orchestration import block_types, host_deployments
from orchestration.prefect_api import ControlPlane, ControlPlaneError, api_call, api_status

Progress = Callable[[str], None]
REPO = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).with_name("prefect")
# prefect.yaml's queue, which every host's worker also polls: the scheduled runs that are no
# one host's (janitor, golden image). Agent-task runs go to a host's own queue instead.
SHARED_QUEUE = "default"
WORKER_PREFIX = "fluid-"
# Seconds between a fluid worker's heartbeats (Prefect's default is 30). Prefect reports a
# worker OFFLINE after three missed ones; placement and the cluster janitor go by that.
WORKER_HEARTBEAT_S = 10
# How far the Prefect server's clock may lag this host's when judging a fresh poll.
POLL_CLOCK_SKEW = timedelta(seconds=5)


def _quiet(_msg: str) -> None:
    pass


def auth_string(settings: FluidSettings | None = None) -> SecretStr:
    """The local API's authentication string, made (0600) on first use."""
    settings = settings or get_settings()
    path = private_dir(settings.prefect_dir) / "auth-string"
    if not path.exists():
        # The UI's login asks for this string as its password: one token, easy to paste.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    return SecretStr(path.read_text().strip())


def local(settings: FluidSettings | None = None) -> ControlPlane:
    """The local control plane's addresses (whether or not it is running)."""
    settings = settings or get_settings()
    base = f"http://127.0.0.1:{settings.prefect_port}"
    return ControlPlane(api_url=f"{base}/api", ui_url=base, auth_string=auth_string(settings))


def from_environment() -> ControlPlane | None:
    """The Prefect API named by PREFECT_API_URL (a server you run, e.g. one for many hosts),
    with PREFECT_API_AUTH_STRING; None when it is not set (fluid's local server then)."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return None
    return ControlPlane(
        api_url=api.rstrip("/"),
        ui_url=os.environ.get("PREFECT_UI_URL") or api.rstrip("/").removesuffix("/api"),
        auth_string=SecretStr(os.environ.get("PREFECT_API_AUTH_STRING", "")),
    )


def _base_env(settings: FluidSettings) -> dict[str, str]:
    # Every FLUID_* as `settings` holds it: a worker started for another host (its own
    # storage, ports, libvirt) hands that host's settings to its flow runs.
    env = environment(settings)
    for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_PROFILES_PATH"):
        env.pop(k, None)
    env |= {
        "PREFECT_HOME": str(settings.prefect_dir),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # The worker hands these to flow processes: settings come from this environment.
        "FLUID_HOME": str(settings.home),
        "FLUID_STORAGE_DIR": str(settings.storage_dir),
        "FLUID_PREFECT_PORT": str(settings.prefect_port),
        "PATH": f"{PREFECT.parent}:{env.get('PATH', '')}",
    }
    if settings.database_url:
        env["FLUID_DATABASE_URL"] = settings.database_url
    return env


def _running(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    # Reap it if it is our own child (the process that started it may still be alive).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    return pid if _running(pid) else None


def _spawn(argv: list[str], env: dict[str, str], log: Path, pid_file: Path, umask: int = -1) -> int:
    private_dir(log.parent)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)  # an older install's log may be open to others
    with os.fdopen(fd, "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own session: it outlives the `fluid run` that started it, and Ctrl-C there
            # does not reach it.
            start_new_session=True,
            umask=umask,
        )
    write_private(pid_file, str(proc.pid).encode())
    return proc.pid


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _prefect_cli(args: list[str], cp: ControlPlane, settings: FluidSettings) -> str:
    # PWD: prefect.yaml's pull step points flow runs at this checkout through it.
    env = _base_env(settings) | cp.client_env() | {"COLUMNS": "200", "PWD": str(REPO)}
    r = subprocess.run(
        [str(PREFECT), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if r.returncode != 0:
        raise ControlPlaneError(
            f"`prefect {' '.join(args)}` failed ({r.returncode}):\n{r.stdout[-2000:]}"
            f"{r.stderr[-2000:]}"
        )
    return r.stdout


def start_server(settings: FluidSettings, say: Progress = _quiet) -> ControlPlane:
    """Start the API server unless it answers already; wait until it is healthy."""
    store.engine(settings)  # the store's migrations run here, before any flow opens it
    cp = local(settings)
    if api_status(f"{cp.api_url}/health") == 200:
        if api_status(f"{cp.api_url}/admin/version", cp.auth_string) != 200:
            raise ControlPlaneError(
                f"something else answers on 127.0.0.1:{settings.prefect_port} and does not "
                "accept fluid's auth string; stop it or set FLUID_PREFECT_PORT"
            )
        return cp
    d = settings.prefect_dir
    say(f"starting the Prefect server on {cp.ui_url}")
    env = _base_env(settings) | {
        "PREFECT_SERVER_API_AUTH_STRING": cp.auth_string.get_secret_value(),
        # The UI is told where the API is; without this it calls port 4200 whatever --port is.
        "PREFECT_UI_API_URL": cp.api_url,
        # Links the server makes (an automation's notification) point at this UI.
        "PREFECT_UI_URL": cp.ui_url,
        # Suspended runs whose approval deadline passed are failed within seconds.
        "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "5",
        # Sandbox slots (orchestration/limits.py) are leases; kept in memory, a server restart would
        # forget them while their slots stay counted as taken, forever.
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": (
            "prefect.server.concurrency.lease_storage.filesystem"
        ),
        # A run queued for a sandbox slot asks again at most this often (Prefect: 30 s).
        "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "10",
    }
    _spawn(
        [
            str(PREFECT),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.prefect_port),
        ],
        env,
        d / "server.log",
        d / "server.pid",
        # Only the server: the worker's flow runs build images, whose files need their modes.
        umask=0o077,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if api_status(f"{cp.api_url}/health") == 200:
            return cp
        if _pid_alive(d / "server.pid") is None:
            break
        time.sleep(0.5)
    raise ControlPlaneError(
        f"the Prefect server did not come up; its log ({d / 'server.log'}) ends with:\n"
        f"{_log_tail(d / 'server.log')}"
    )


def _deployments_digest() -> str:
    return hashlib.sha256((REPO / "prefect.yaml").read_bytes()).hexdigest()


def deploy(settings: FluidSettings, say: Progress = _quiet, force: bool = False) -> None:
    """Create the work pool and fluid's deployments (again when prefect.yaml changed)."""
    cp = local(settings)
    stamp = settings.prefect_dir / "deployed"
    if not force and stamp.exists() and stamp.read_text() == _deployments_digest():
        return
    say("creating the work pool and fluid's deployments")
    try:
        _prefect_cli(["work-pool", "inspect", settings.work_pool], cp, settings)
    except ControlPlaneError:
        _prefect_cli(["work-pool", "create", settings.work_pool, "--type", "process"], cp, settings)
    _prefect_cli(["--no-prompt", "deploy", "--all"], cp, settings)
    write_private(stamp, _deployments_digest().encode())


def worker_name(host: str) -> str:
    """The name of `host`'s Prefect worker (orchestration/liveness.py finds hosts by it)."""
    return WORKER_PREFIX + check(host)


def worker_files(settings: FluidSettings, host: str) -> tuple[Path, Path]:
    """The pid file and log of `host`'s worker, under FLUID_HOME/prefect."""
    d = settings.prefect_dir
    return d / f"worker-{check(host)}.pid", d / f"worker-{host}.log"


def _legacy_worker(settings: FluidSettings) -> Path:
    # The pid file of a worker started before hosts: it polls every queue of the pool.
    return settings.prefect_dir / "worker.pid"


def ensure_queue(cp: ControlPlane, settings: FluidSettings, queue: str) -> None:
    """Create work queue `queue` in fluid's pool unless it exists."""
    url = _queue_url(cp, settings, queue)
    if api_status(url, cp.auth_string) == 200:
        return
    code = api_status(
        url.rsplit("/", 1)[0],
        cp.auth_string,
        body={"name": queue, "description": "runs placed on this fluid host; its worker polls it"},
    )
    if code in (200, 201, 409):  # 409: another process made it first
        return
    if code == 404:
        raise ControlPlaneError(
            f"no work pool {settings.work_pool!r} on the Prefect server at {cp.api_url}: run "
            f"`fluid server start` there, or `prefect work-pool create {settings.work_pool} "
            "--type process`"
        )
    raise ControlPlaneError(
        f"could not create the work queue {queue!r} in pool {settings.work_pool!r} on "
        f"{cp.api_url} (HTTP {code or 'no answer'})"
    )


def _queue_url(cp: ControlPlane, settings: FluidSettings, queue: str) -> str:
    pool = urllib.parse.quote(settings.work_pool, safe="")
    return f"{cp.api_url}/work_pools/{pool}/queues/{urllib.parse.quote(queue, safe='')}"


def last_polled(cp: ControlPlane, settings: FluidSettings, queue: str) -> datetime | None:
    """When a worker last polled `queue` of fluid's pool; None: never, or no such queue."""
    code, body = api_call(_queue_url(cp, settings, queue), cp.auth_string)
    if code != 200:
        return None
    polled = json.loads(body).get("last_polled")
    return datetime.fromisoformat(polled) if polled else None


def _wait_polling(
    cp: ControlPlane, settings: FluidSettings, queue: str, pid_file: Path, log: Path
) -> None:
    # Placement counts a host whose queue was not polled lately as offline: a run submitted
    # the moment its worker was started must find it polling.
    started = datetime.now(UTC) - POLL_CLOCK_SKEW
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        polled = last_polled(cp, settings, queue)
        if polled is not None and polled >= started:
            return
        if _pid_alive(pid_file) is None:
            break
        time.sleep(0.5)
    # A worker that never polls would take runs later, unseen: it goes before the error.
    tail = _log_tail(log)
    _stop(pid_file, "worker that did not start polling", _quiet)
    raise ControlPlaneError(
        f"the Prefect worker did not start polling its queue {queue!r}; its log ({log}) ends "
        f"with:\n{tail}"
    )


def register_host(settings: FluidSettings, host: str) -> None:
    """Record `host` in the hosts table (with what it runs VMs on) and that it is alive now."""
    from infra.host.libvirt_host import domain_type
    from infra.records import hosts

    # Only this host's own hardware can be read here; a host started for another id (a
    # simulated host on this machine) shares it.
    registered = hosts.add(host, domain_type=domain_type(settings), settings=settings)
    hosts.heartbeat(host, settings=settings)
    if registered.state == "down":
        # Back: placement may use it again (a drained host stays drained).
        hosts.set_state(host, "ready", "its worker started again", settings)


def start_worker(
    settings: FluidSettings,
    say: Progress = _quiet,
    host: str | None = None,
    cp: ControlPlane | None = None,
) -> int:
    """Start `host`'s (default: this host's) process worker unless it is running; its pid.

    It registers the host, makes its work queue and polls only that queue and the shared one,
    with FLUID_HOST_ID set so its flow runs know which host they are on; returns once the
    worker polls. `cp` is the API it works for (default: the local server).
    """
    from infra.records.hosts import work_queue

    host = check(host or host_id(settings))
    cp = cp or local(settings)
    pid_file, log = worker_files(settings, host)
    register_host(settings, host)
    ensure_queue(cp, settings, work_queue(host))
    host_deployments.ensure_janitor(cp, host)
    # A worker on every queue would take other hosts' runs.
    _stop(_legacy_worker(settings), "worker on every queue (started before hosts)", say)
    pid = _pid_alive(pid_file)
    if pid is not None:
        return pid
    say(f"starting the Prefect worker of host {host} on pool {settings.work_pool}")
    env = (
        _base_env(settings)
        | cp.client_env()
        | {
            "FLUID_HOST_ID": host,
            "PREFECT_WORKER_HEARTBEAT_SECONDS": str(WORKER_HEARTBEAT_S),
            # Pick up new runs within 2 s instead of 10 s.
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        }
    )
    pid = _spawn(
        [
            str(PREFECT),
            "worker",
            "start",
            "--pool",
            settings.work_pool,
            "--type",
            "process",
            "--work-queue",
            work_queue(host),
            "--work-queue",
            SHARED_QUEUE,
            "--name",
            worker_name(host),
            "--install-policy",
            "never",
        ],
        env,
        log,
        pid_file,
    )
    _wait_polling(cp, settings, work_queue(host), pid_file, log)
    return pid


def ensure_running(
    settings: FluidSettings | None = None, progress: Progress | None = None
) -> ControlPlane:
    """Server (with fluid's block types), work pool, deployments and this host's worker
    (registered, on its own queue), each started only if missing."""
    settings = settings or get_settings()
    say = progress or _quiet
    cp = start_server(settings, say)
    block_types.ensure_registered(cp, settings, lambda a: _prefect_cli(a, cp, settings), say)
    deploy(settings, say)
    start_worker(settings, say, cp=cp)
    return cp


def _stop(pid_file: Path, name: str, say: Progress) -> bool:
    pid = _pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    say(f"stopping the Prefect {name} (pid {pid})")
    # SIGINT: Prefect's worker shuts down cleanly on it; then the whole process group.
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _running(pid):
                pid_file.unlink(missing_ok=True)
                return True
            time.sleep(0.2)
    raise ControlPlaneError(f"the Prefect {name} (pid {pid}) did not stop")


def stop_worker(
    settings: FluidSettings | None = None,
    progress: Progress | None = None,
    host: str | None = None,
) -> bool:
    """Stop `host`'s (default: this host's) worker; True when one was running."""
    settings = settings or get_settings()
    say = progress or _quiet
    pid_file, _log = worker_files(settings, host or host_id(settings))
    stopped = _stop(pid_file, "worker", say)
    return _stop(_legacy_worker(settings), "worker", say) or stopped


def local_workers(settings: FluidSettings) -> dict[str, int | None]:
    """The pid (None: not running) of each host's worker started from this FLUID_HOME."""
    return {
        f.name.removeprefix("worker-").removesuffix(".pid"): _pid_alive(f)
        for f in sorted(settings.prefect_dir.glob("worker-*.pid"))
    }


def stop(settings: FluidSettings | None = None, progress: Progress | None = None) -> None:
    """Stop the local workers and server (runs waiting for approval stay suspended)."""
    settings = settings or get_settings()
    say = progress or _quiet
    for host in local_workers(settings):
        stop_worker(settings, say, host)
    stop_worker(settings, say)
    _stop(settings.prefect_dir / "server.pid", "server", say)


def status(settings: FluidSettings | None = None) -> dict[str, object]:
    """Whether the local server and this host's worker are up, and where."""
    settings = settings or get_settings()
    cp = local(settings)
    me = host_id(settings)
    pid_file, _log = worker_files(settings, me)
    return {
        "api_url": cp.api_url,
        "ui_url": cp.ui_url,
        "server": api_status(f"{cp.api_url}/health") == 200,
        "host": me,
        "worker_pid": _pid_alive(pid_file) or _pid_alive(_legacy_worker(settings)),
        "workers": local_workers(settings),
    }


def use_prefect(settings: FluidSettings | None = None, progress: Progress | None = None) -> None:
    """Point this process's Prefect client at fluid's API; call before importing Prefect.

    A PREFECT_API_URL already in the environment wins (a server you run yourself, with its
    PREFECT_API_AUTH_STRING); otherwise the local control plane is started as needed.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if os.environ.get("PREFECT_API_URL"):
        return
    cp = ensure_running(settings, progress)
    os.environ.update(cp.client_env())
