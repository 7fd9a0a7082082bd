"""The transports to a guest share one protocol and one result type: signatures compared with
inspect (no VM), and the guest agent's run() against the shared agent sandbox (VM)."""

from __future__ import annotations

import inspect
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Protocol

import pytest

from infra.errors import GuestAgentError
from infra.host.libvirt_host import connection, lookup
from infra.machines import sandboxes
from infra.settings import FluidSettings
from infra.transport import guest_agent
from infra.transport.command_output import CUT_MARKER, CommandResult
from infra.transport.guest_agent import GuestAgent
from infra.transport.guest_shell import GuestShell
from infra.transport.protocol import FileTransport, Transport
from infra.transport.ssh import GuestConnection
from infra.transport.tmux_session import attach_argv
from tests.test_layers import ROOT, forbidden_imports

# What uses a transport sits above it: transport never imports it (not even lazily).
ABOVE_TRANSPORT = frozenset(
    {"infra.machines", "infra.state", "infra.records", "infra.agents", "infra.ansible"}
)
EMPTY = inspect.Parameter.empty
VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def protocol_methods(proto: type) -> list[str]:
    """The methods a protocol declares, its bases' included."""
    return sorted(
        {
            name
            for base in proto.__mro__
            if base not in (Protocol, object) and Protocol in base.__mro__
            for name, value in vars(base).items()
            if inspect.isfunction(value) and not name.startswith("_")
        }
    )


def mismatches(impl: type, proto: type) -> list[str]:
    """How `impl`'s methods fail to accept every call the protocol allows (empty: they do)."""
    problems = []
    for name in protocol_methods(proto):
        if not callable(getattr(impl, name, None)):
            problems.append(f"{impl.__name__} has no {name}()")
            continue
        want = inspect.signature(getattr(proto, name))
        got = inspect.signature(getattr(impl, name))
        where = f"{impl.__name__}.{name}"
        for p in want.parameters.values():
            q = got.parameters.get(p.name)
            if q is None or q.kind != p.kind:
                problems.append(f"{where} does not take {p.name} as {p.kind.description}")
            elif p.default is not EMPTY and q.default is EMPTY:
                problems.append(f"{where} requires {p.name}, which the protocol makes optional")
        for q in got.parameters.values():
            if q.name not in want.parameters and q.default is EMPTY and q.kind not in VARIADIC:
                problems.append(f"{where} requires {q.name}, which the protocol does not pass")
        if got.return_annotation != want.return_annotation:
            problems.append(f"{where} returns {got.return_annotation}")
    return problems


@pytest.mark.parametrize("transport", [GuestConnection, GuestShell, GuestAgent])
def test_every_transport_runs_commands_with_one_signature_and_result(transport: type) -> None:
    assert protocol_methods(Transport) == ["run"]
    assert mismatches(transport, Transport) == []


def test_ssh_also_uploads_and_reads_files() -> None:
    assert protocol_methods(FileTransport) == ["read_bytes", "run", "upload_bytes"]
    assert mismatches(GuestConnection, FileTransport) == []
    # Structurally, at run time too.
    assert issubclass(GuestConnection, FileTransport)
    assert issubclass(GuestShell, Transport) and not issubclass(GuestShell, FileTransport)


class Stray:
    """Not a transport: a different name, a required extra, no default, another result."""

    def run(self, cmd: str, *, timeout: float, output_cap: int, sudo: bool) -> bytes:
        return b""

    def upload_bytes(self, data: bytes, remote_path: str, mode: int | None) -> None: ...


def test_the_signature_check_catches_what_differs() -> None:
    assert mismatches(Stray, FileTransport) == [
        "Stray has no read_bytes()",
        "Stray.run does not take command as positional or keyword",
        "Stray.run requires output_cap, which the protocol makes optional",
        "Stray.run requires cmd, which the protocol does not pass",
        "Stray.run requires sudo, which the protocol does not pass",
        "Stray.run returns bytes",
        "Stray.upload_bytes requires mode, which the protocol makes optional",
    ]


def test_a_result_is_built_from_what_each_stream_kept_and_cut() -> None:
    started = datetime.now(UTC)
    r = CommandResult.ended_now(
        "echo hi",
        0,
        (b"hi\n", 0),
        (b"a" + CUT_MARKER % 5 + b"b", 5),
        started_at=started,
        duration_s=0.25,
        timed_out=False,
    )
    assert (r.command, r.exit_status, r.stdout, r.stdout_cut, r.stderr_cut) == (
        "echo hi",
        0,
        b"hi\n",
        0,
        5,
    )
    assert r.started_at == started <= r.ended_at and r.duration_s == 0.25 and not r.timed_out


@pytest.fixture
def agent(agent_box: sandboxes.Sandbox, settings: FluidSettings) -> Iterator[GuestAgent]:
    """The shared agent sandbox's QEMU guest agent."""
    with connection(settings) as conn:
        dom = lookup(conn, agent_box.domain_name)
        assert dom is not None
        guest_agent.wait_until_up(dom, 60)
        yield GuestAgent(dom)


@pytest.mark.vm
def test_the_guest_agent_runs_a_shell_command_with_the_result_ssh_gives(
    agent: GuestAgent, agent_box: sandboxes.Sandbox, settings: FluidSettings
) -> None:
    r = agent.run("printf 'out\\n'; printf err >&2; exit 3", timeout=30)
    assert (r.exit_status, r.stdout, r.stderr, r.timed_out) == (3, b"out\n", b"err", False)
    flood = "head -c 100000 /dev/zero | tr '\\0' x"
    capped = agent.run(flood, timeout=30, output_cap=1000)
    assert capped.exit_status == 0 and capped.stdout_cut == 99_000
    with sandboxes.guest(agent_box.id, settings) as conn:
        assert conn.run(flood, timeout=30, output_cap=1000).stdout == capped.stdout


@pytest.mark.vm
def test_the_guest_agent_gives_up_past_the_timeout(agent: GuestAgent) -> None:
    with pytest.raises(GuestAgentError, match="ran past"):
        agent.run("sleep 5", timeout=1)


def test_attach_argv_runs_tmux_after_the_destination_read_only_unless_asked() -> None:
    ssh_argv = ["ssh", "-i", "key", "-p", "2222", "root@127.0.0.1"]
    ro = attach_argv(ssh_argv)
    rw = attach_argv(ssh_argv, read_write=True)
    assert ro[:-2] == ["ssh", "-i", "key", "-p", "2222", "-t"]
    assert ro[-2] == "root@127.0.0.1" == rw[-2]
    assert shlex.split(ro[-1])[-1] == "-r" and "-r" not in shlex.split(rw[-1])


def test_transport_imports_nothing_that_uses_a_transport() -> None:
    problems = []
    for path in sorted((ROOT / "infra" / "transport").glob("*.py")):
        rel = str(path.relative_to(ROOT))
        problems += forbidden_imports(path.read_text(), rel, ABOVE_TRANSPORT)
    assert not problems, "\n".join(problems)
    assert forbidden_imports(
        "def f():\n    from infra.machines import sandboxes\n",
        "infra/transport/x.py",
        ABOVE_TRANSPORT,
    ) == ["infra/transport/x.py:2: imports infra.machines.sandboxes"]
