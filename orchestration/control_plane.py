"""fluid's local Prefect: one API server, one process worker and fluid's deployments.

Started on demand by `fluid run` (and `make demo`) when PREFECT_API_URL is not set, and left
running so the UI stays open and suspended runs can be resumed. The API requires an
authentication string that only fluid knows (a 0600 file under FLUID_HOME): nothing inside a
sandbox can reach or authenticate to it, so an agent cannot approve its own change. The
server's home (FLUID_HOME/prefect: its database, results, logs) is root's alone (0700), and
the server makes its files 0600 (umask 077).

This module starts processes and speaks HTTP; it does not import Prefect.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, SecretStr

from infra.errors import FluidError
from infra.host.permissions import PRIVATE_FILE, private_dir, write_private
from infra.settings import FluidSettings, get_settings

Progress = Callable[[str], None]
REPO = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).with_name("prefect")


class ControlPlaneError(FluidError):
    """The local Prefect server or worker could not be started or reached."""


class ControlPlane(BaseModel):
    """Where fluid's Prefect API and UI answer, and the string that unlocks the API."""

    api_url: str
    ui_url: str
    auth_string: SecretStr

    def run_url(self, flow_run_id: str) -> str:
        """The UI page of one flow run."""
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"

    def client_env(self) -> dict[str, str]:
        """Environment variables that point a Prefect client at this API."""
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_AUTH_STRING": self.auth_string.get_secret_value(),
        }


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


def _base_env(settings: FluidSettings) -> dict[str, str]:
    env = dict(os.environ)
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


def _get(url: str, auth: SecretStr | None = None, timeout: float = 3.0) -> int:
    """HTTP status of a GET, or 0 when nothing answers."""
    req = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(auth.get_secret_value().encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


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
    cp = local(settings)
    if _get(f"{cp.api_url}/health") == 200:
        if _get(f"{cp.api_url}/admin/version", cp.auth_string) != 200:
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
        if _get(f"{cp.api_url}/health") == 200:
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


def start_worker(settings: FluidSettings, say: Progress = _quiet) -> int:
    """Start a process worker on fluid's pool unless one is running; its pid."""
    d = settings.prefect_dir
    pid = _pid_alive(d / "worker.pid")
    if pid is not None:
        return pid
    say(f"starting a Prefect worker on pool {settings.work_pool}")
    env = (
        _base_env(settings)
        | local(settings).client_env()
        | {
            # Pick up new runs within 2 s instead of 10 s.
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        }
    )
    return _spawn(
        [
            str(PREFECT),
            "worker",
            "start",
            "--pool",
            settings.work_pool,
            "--type",
            "process",
            "--install-policy",
            "never",
        ],
        env,
        d / "worker.log",
        d / "worker.pid",
    )


def ensure_running(
    settings: FluidSettings | None = None, progress: Progress | None = None
) -> ControlPlane:
    """Server, work pool, deployments and worker, each started only if missing."""
    settings = settings or get_settings()
    say = progress or _quiet
    cp = start_server(settings, say)
    deploy(settings, say)
    start_worker(settings, say)
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


def stop_worker(settings: FluidSettings | None = None, progress: Progress | None = None) -> bool:
    """Stop the local worker; True when one was running."""
    settings = settings or get_settings()
    return _stop(settings.prefect_dir / "worker.pid", "worker", progress or _quiet)


def stop(settings: FluidSettings | None = None, progress: Progress | None = None) -> None:
    """Stop the local worker and server (runs waiting for approval stay suspended)."""
    settings = settings or get_settings()
    say = progress or _quiet
    stop_worker(settings, say)
    _stop(settings.prefect_dir / "server.pid", "server", say)


def status(settings: FluidSettings | None = None) -> dict[str, object]:
    """Whether the local server and worker are up, and where."""
    settings = settings or get_settings()
    cp = local(settings)
    return {
        "api_url": cp.api_url,
        "ui_url": cp.ui_url,
        "server": _get(f"{cp.api_url}/health") == 200,
        "worker_pid": _pid_alive(settings.prefect_dir / "worker.pid"),
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
