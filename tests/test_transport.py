"""The transports to a guest share one protocol and one result type (no VM, no guest: the
guest agent is answered by a fake, signatures are compared with inspect)."""

from __future__ import annotations

import base64
import inspect
import json
import shlex
from datetime import UTC, datetime
from typing import Protocol

import pytest

from infra.errors import GuestAgentError
from infra.transport import guest_agent
from infra.transport.command_output import CUT_MARKER, CommandResult
from infra.transport.guest_agent import GuestAgent
from infra.transport.guest_shell import GuestShell
from infra.transport.protocol import FileTransport, Transport
from infra.transport.ssh import GuestConnection
from infra.transport.tmux_session import attach_argv

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


class FakeDomain:
    """A domain whose guest agent answers guest-exec and guest-exec-status from a script."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, finished: dict, polls: int = 1) -> None:
        self.calls: list[dict] = []
        self.finished = finished
        self.polls = polls
        monkeypatch.setattr(guest_agent.libvirt_qemu, "qemuAgentCommand", self.answer)

    def name(self) -> str:
        return "fake"

    def answer(self, dom: FakeDomain, payload: str, timeout: int, flags: int) -> str:
        call = json.loads(payload)
        self.calls.append(call)
        if call["execute"] == "guest-exec":
            return json.dumps({"return": {"pid": 42}})
        self.polls -= 1
        return json.dumps({"return": self.finished if self.polls <= 0 else {"exited": False}})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_guest_agent_runs_a_shell_command_and_caps_its_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = b"x" * 50 + b"y" * 50
    dom = FakeDomain(
        monkeypatch,
        {"exited": True, "exitcode": 3, "out-data": _b64(out), "err-data": _b64(b"oops\n")},
        polls=2,
    )
    r = GuestAgent(dom).run("echo hi; exit 3", timeout=5, output_cap=20)
    assert dom.calls[0] == {
        "execute": "guest-exec",
        "arguments": {"path": "/bin/sh", "arg": ["-c", "echo hi; exit 3"], "capture-output": True},
    }
    assert dom.calls[1:] == [{"execute": "guest-exec-status", "arguments": {"pid": 42}}] * 2
    assert isinstance(r, CommandResult) and r.exit_status == 3 and not r.timed_out
    assert r.stdout == b"x" * 10 + CUT_MARKER % 80 + b"y" * 10 and r.stdout_cut == 80
    assert r.stderr == b"oops\n" and r.stderr_cut == 0


def test_a_command_killed_by_a_signal_has_the_negative_signal_as_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dom = FakeDomain(monkeypatch, {"exited": True, "signal": 9})
    assert GuestAgent(dom).run("sleep 100", timeout=5).exit_status == -9
    assert guest_agent.run(dom, ["/bin/sleep", "100"]).exit_code == -9


def test_the_argv_form_keeps_its_decoded_result_and_sends_stdin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dom = FakeDomain(monkeypatch, {"exited": True, "exitcode": 0, "out-data": _b64(b"ok\n\xff")})
    r = guest_agent.run(dom, ["/usr/bin/perl", "-e", "1"], stdin=b"secret")
    assert dom.calls[0]["arguments"]["input-data"] == _b64(b"secret")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "ok\n\ufffd", "")


def test_the_guest_agent_gives_up_past_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    dom = FakeDomain(monkeypatch, {"exited": True, "exitcode": 0}, polls=10**9)
    with pytest.raises(GuestAgentError, match="ran past"):
        GuestAgent(dom).run("sleep 100", timeout=0.05)


def test_attach_argv_runs_tmux_after_the_destination_read_only_unless_asked() -> None:
    ssh_argv = ["ssh", "-i", "key", "-p", "2222", "root@127.0.0.1"]
    ro = attach_argv(ssh_argv)
    rw = attach_argv(ssh_argv, read_write=True)
    assert ro[:-2] == ["ssh", "-i", "key", "-p", "2222", "-t"]
    assert ro[-2] == "root@127.0.0.1" == rw[-2]
    assert shlex.split(ro[-1])[-1] == "-r" and "-r" not in shlex.split(rw[-1])
