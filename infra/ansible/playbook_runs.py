"""Run a playbook directory with ansible-runner against sandboxes (or any SSH hosts)."""

from __future__ import annotations

import os
import pwd
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from infra.errors import FluidError
from infra.host.permissions import write_private
from infra.machines import lifecycle, sandbox_records
from infra.settings import FluidSettings, get_settings
from infra.transport import ssh_ca


class AnsibleJump(BaseModel):
    """A jump host an inventory host is reached through, with that host's key and certificate."""

    address: str
    port: int
    user: str
    known_hosts_path: Path | None = None


class AnsibleHost(BaseModel):
    """One inventory host reached over SSH with a key (and optionally a certificate)."""

    name: str
    address: str
    port: int
    user: str = "root"
    key_path: Path
    cert_path: Path | None = None
    known_hosts_path: Path | None = None
    # Connect as `user`, then run tasks as `become_user` through sudo (ansible_become).
    become: bool = False
    become_user: str = "root"
    jump: AnsibleJump | None = None


# Characters of a module's message kept per task result (it may quote guest data: shown
# escaped), and task results kept per run (one per task and host).
MESSAGE_LIMIT = 500
TASK_RESULTS = 10_000
# ansible-runner's event for one task's result on one host → its status.
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}

TaskStatus = Literal["changed", "ok", "skipped", "failed", "ignored", "unreachable"]


class TaskResult(BaseModel):
    """What one task did on one host. In check mode "changed" means it would change, and
    "ignored" that it failed there and the play went on (export.PREVIEW_GOES_ON)."""

    task: str
    host: str
    status: TaskStatus
    message: str = Field(default="", description="the module's message, for a failure")


class PlaybookRun(BaseModel):
    """The outcome of one ansible-playbook run."""

    status: str
    rc: int
    ok: dict[str, int]
    changed: dict[str, int]
    failures: dict[str, int]
    unreachable: dict[str, int]
    duration_s: float
    check: bool = False
    output_tail: str = ""
    output_chars: int = 0  # of the whole output; output_tail is its end
    # In the order they ran, the first TASK_RESULTS of tasks_total.
    tasks: list[TaskResult] = Field(default_factory=list)
    tasks_total: int = 0

    @property
    def succeeded(self) -> bool:
        return self.rc == 0 and not self.failures and not self.unreachable

    @property
    def changed_total(self) -> int:
        return sum(self.changed.values())


def task_results(into: list[TaskResult], count: list[int]) -> Callable[[dict[str, Any]], bool]:
    """An ansible-runner event handler that appends each task result to `into` (the first
    TASK_RESULTS; count[0] counts them all)."""

    def handle(event: dict[str, Any]) -> bool:
        status = RESULT_EVENTS.get(str(event.get("event")))
        if status is None:
            return True
        count[0] += 1
        if len(into) >= TASK_RESULTS:
            return True
        data = event.get("event_data") or {}
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        if status == "ok" and res.get("changed"):
            status = "changed"
        if status == "failed" and data.get("ignore_errors"):
            status = "ignored"
        message = ""
        if status in ("failed", "ignored", "unreachable"):
            message = str(res.get("msg") or res.get("stderr") or "")[:MESSAGE_LIMIT]
        into.append(
            TaskResult(
                task=str(data.get("task", "")),
                host=str(data.get("host", "")),
                status=status,
                message=message,
            )
        )
        return True  # the runner still writes the event to its (temporary) artifacts

    return handle


def sandbox_host(
    sandbox_id: str, workdir: Path, settings: FluidSettings | None = None
) -> AnsibleHost:
    """An inventory entry for a sandbox, with a fresh certificate valid 10 minutes."""
    settings = settings or get_settings()
    rec = sandbox_records.record(sandbox_id, settings)
    if not rec.host_key:
        raise FluidError(f"sandbox {sandbox_id} never finished booting")
    creds = ssh_ca.authority(settings).issue(lifecycle.principal(sandbox_id), timedelta(minutes=10))
    d = workdir / f"host-{sandbox_id}"
    key = creds.write_files(d)
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{rec.ssh_port} {rec.host_key}\n")
    return AnsibleHost(
        name=sandbox_id,
        address="127.0.0.1",
        port=rec.ssh_port,
        key_path=key,
        cert_path=Path(f"{key}-cert.pub"),
        known_hosts_path=known,
    )


def _proxy_command(h: AnsibleHost) -> str:
    # Not -J: options on ssh's command line do not reach a jump host's connection, so its key,
    # certificate and pinned host key would be lost. %h:%p is the target as the jump sees it.
    assert h.jump is not None
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(h.key_path)]
    argv += ["-o", "StrictHostKeyChecking=yes"]
    if h.cert_path:
        argv += ["-o", f"CertificateFile={h.cert_path}"]
    if h.jump.known_hosts_path:
        argv += ["-o", f"UserKnownHostsFile={h.jump.known_hosts_path}"]
    argv += ["-p", str(h.jump.port), "-l", h.jump.user, "-W", "%h:%p", "--", h.jump.address]
    return shlex.join(argv)


def inventory(hosts: list[AnsibleHost]) -> dict:
    """A YAML inventory for `hosts`; host keys are checked against the given known_hosts."""
    entries = {}
    for h in hosts:
        ssh_args = ["-o IdentitiesOnly=yes", "-o StrictHostKeyChecking=yes"]
        if h.cert_path:
            ssh_args.append(f"-o CertificateFile={h.cert_path}")
        if h.known_hosts_path:
            ssh_args.append(f"-o UserKnownHostsFile={h.known_hosts_path}")
        if h.jump:
            ssh_args.append("-o " + shlex.quote(f"ProxyCommand={_proxy_command(h)}"))
        entries[h.name] = {
            "ansible_host": h.address,
            "ansible_port": h.port,
            "ansible_user": h.user,
            "ansible_ssh_private_key_file": str(h.key_path),
            "ansible_ssh_common_args": " ".join(ssh_args),
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        if h.become:
            entries[h.name] |= {"ansible_become": True, "ansible_become_user": h.become_user}
    return {"all": {"hosts": entries}}


def run_playbook(
    playbook_dir: Path,
    hosts: list[AnsibleHost],
    *,
    check: bool = False,
    diff: bool = False,
    workdir: Path | None = None,
    settings: FluidSettings | None = None,
    output_file: Path | None = None,
) -> PlaybookRun:
    """ansible-playbook DIR/site.yml against `hosts` through ansible-runner, in an
    environment of its own (`ansible_environment`): nothing of the flow's credentials."""
    from ansible_runner import Runner, RunnerConfig
    from ansible_runner.utils import signal_handler

    settings = settings or get_settings()
    site = Path(playbook_dir).resolve() / "site.yml"
    if not site.exists():
        raise FluidError(f"{playbook_dir} has no site.yml; is it a fluid export?")
    with (
        tempfile.TemporaryDirectory(prefix="fluid-ansible-", dir=workdir) as tmp,
        # SSH master connections of this run only: a master left by an earlier run to the same
        # user@host:port would be reused without this run's host keys, jump host or key being
        # checked. Under /tmp: a socket's path must stay short.
        tempfile.TemporaryDirectory(prefix="fluid-cp-") as control_dir,
    ):
        inv = Path(tmp) / "inventory.yml"
        inv.write_text(yaml.safe_dump(inventory(hosts)))
        # An empty config of our own: a user's ansible.cfg must not change the run.
        cfg = Path(tmp) / "ansible.cfg"
        cfg.write_text("[defaults]\n")
        cmdline = " ".join(x for x in ("--check" if check else "", "--diff" if diff else ""))
        ours = {
            "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=60s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
            "ANSIBLE_CONFIG": str(cfg),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "1",
            # One SSH round trip per task instead of several: tasks are slow on TCG guests.
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_LOCAL_TEMP": str(Path(tmp) / "ansible-tmp"),
            **strategy_environment(settings.ansible_strategy),
        }
        start = time.monotonic()
        config = RunnerConfig(
            private_data_dir=tmp,
            host_cwd=tmp,
            playbook=str(site),
            inventory=str(inv),
            cmdline=cmdline or None,
            # Blank, so the runner's callback settings are its own and not the flow's.
            envvars={**ours, "ANSIBLE_CALLBACK_PLUGINS": "", "AWX_LIB_DIRECTORY": ""},
            quiet=True,
            suppress_env_files=True,
        )
        config.prepare()
        # prepare() starts from a copy of os.environ (the flow's: Prefect's auth string, API
        # keys); the child gets only what Ansible and the runner's event callback need.
        config.env = ansible_environment(ours, config.env)
        # As ansible_runner.run does: in the main thread, Ctrl-C and SIGTERM cancel the run.
        results: list[TaskResult] = []
        count = [0]
        r = Runner(
            config=config,
            cancel_callback=signal_handler(),
            event_handler=task_results(results, count),
        )
        r.run()
        stats = r.stats or {}
        out = r.stdout.read() if r.stdout else ""
        if output_file is not None:  # the whole output, where a cut view can point to it
            write_private(Path(output_file), out.encode(errors="replace"))
        return PlaybookRun(
            status=r.status,
            rc=r.rc,
            ok=stats.get("ok", {}),
            changed=stats.get("changed", {}),
            failures=stats.get("failures", {}),
            unreachable=stats.get("dark", {}),
            duration_s=round(time.monotonic() - start, 1),
            check=check,
            output_tail=out[-6000:],
            output_chars=len(out),
            tasks=results,
            tasks_total=count[0],
        )


# What ansible-runner's prepare() sets for its own event callback (ansible_runner/config).
RUNNER_VARIABLES = (
    "ANSIBLE_STDOUT_CALLBACK",
    "ANSIBLE_CALLBACK_PLUGINS",
    "ANSIBLE_RETRY_FILES_ENABLED",
    "ANSIBLE_CACHE_PLUGIN",
    "ANSIBLE_CACHE_PLUGIN_CONNECTION",
    "AWX_ISOLATED_DATA_DIR",
    "RUNNER_OMIT_EVENTS",
    "RUNNER_ONLY_FAILED_EVENTS",
)


def ansible_environment(ours: dict[str, str], prepared: dict[str, str]) -> dict[str, str]:
    """The whole environment of ansible-playbook: PATH (the venv's bin first), HOME, a UTF-8
    locale, TMPDIR if set, fluid's ANSIBLE_* settings and the runner's callback variables."""
    parent = os.environ
    home = parent.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    env = {
        # The venv's ansible-playbook, even when the venv is not on PATH.
        "PATH": f"{Path(sys.executable).parent}:{parent.get('PATH') or os.defpath}",
        "HOME": home,
        # ansible-core refuses to start under a locale that is not UTF-8.
        "LANG": _utf8(parent.get("LANG")),
        "LC_ALL": _utf8(parent.get("LC_ALL") or parent.get("LANG")),
    }
    if parent.get("TMPDIR"):
        env["TMPDIR"] = parent["TMPDIR"]
    env |= ours
    env |= {k: prepared[k] for k in RUNNER_VARIABLES if k in prepared}
    return env


def _utf8(locale: str | None) -> str:
    if locale and locale.replace("-", "").lower().endswith(".utf8"):
        return locale
    return "C.UTF-8"


class MitogenNotInstalled(FluidError):
    """FLUID_ANSIBLE_STRATEGY=mitogen, and Mitogen is not installed."""


def strategy_environment(name: str) -> dict[str, str]:
    """Environment selecting the play strategy; mitogen's plugin ships inside its package,
    imported only when chosen (it is an optional extra)."""
    if name != "mitogen":
        return {"ANSIBLE_STRATEGY": name}
    try:
        import ansible_mitogen
    except ImportError as e:
        raise MitogenNotInstalled(
            "FLUID_ANSIBLE_STRATEGY=mitogen, but Mitogen is not installed: install fluid's "
            "`mitogen` extra (pip install 'fluid[mitogen]') or unset FLUID_ANSIBLE_STRATEGY "
            f"to use Ansible's linear strategy ({e})"
        ) from None

    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {
        "ANSIBLE_STRATEGY_PLUGINS": str(plugins),
        "ANSIBLE_STRATEGY": "mitogen_linear",
        # ansible-core warns that third-party strategies are deprecated, on every run.
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
    }
