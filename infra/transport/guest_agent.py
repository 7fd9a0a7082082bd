"""QEMU's guest agent: commands in a guest over its virtio channel, before SSH is usable;
`GuestAgent` offers them as a Transport (infra/transport/protocol.py).

Warm starts use it to give a restored VM its own identity before anything in the guest
answers the network (see infra/machines/warm_slots.py).
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import libvirt
import libvirt_qemu
from pydantic import BaseModel

from infra.errors import GuestAgentError
from infra.transport.command_output import CappedBuffer, CommandResult


class AgentResult(BaseModel):
    """What a command run through the guest agent returned."""

    exit_code: int
    stdout: str
    stderr: str


def _call(dom: libvirt.virDomain, command: str, arguments: dict, timeout_s: int) -> dict:
    payload = json.dumps({"execute": command, "arguments": arguments})
    try:
        reply = libvirt_qemu.qemuAgentCommand(dom, payload, timeout_s, 0)
    except libvirt.libvirtError as e:
        raise GuestAgentError(
            f"guest agent of {dom.name()} did not answer {command}: {e.get_error_message()}"
        ) from e
    return json.loads(reply)["return"]


def ping(dom: libvirt.virDomain, timeout_s: int = 5) -> None:
    """Return once the guest agent answers; GuestAgentError otherwise."""
    _call(dom, "guest-ping", {}, timeout_s)


def wait_until_up(dom: libvirt.virDomain, timeout_s: float) -> None:
    """Ping the agent until it answers (it starts late in a boot)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ping(dom, timeout_s=2)
            return
        except GuestAgentError:
            if time.monotonic() > deadline or not dom.isActive():
                raise
            time.sleep(0.1)


def clock_skew(dom: libvirt.virDomain) -> float:
    """Seconds the guest's clock is ahead of the host's (negative: behind)."""
    before = time.time()
    guest_ns = _call(dom, "guest-get-time", {}, 5)
    return guest_ns / 1e9 - (before + time.time()) / 2


# Shifts the clock by ARGV[0] microseconds. Relative, so the time the command takes to start
# does not end up in the clock. (guest-set-time would also run `hwclock -w`, which waits for
# the RTC's next second.)
_SHIFT_CLOCK_PERL = r"""
my $tv = pack("l!l!", 0, 0);
syscall(96, $tv, 0) == 0 or die "gettimeofday: $!";
my ($sec, $usec) = unpack("l!l!", $tv);
my $t = $sec * 1_000_000 + $usec + $ARGV[0];
syscall(164, pack("l!l!", int($t / 1_000_000), $t % 1_000_000), 0) == 0
  or die "settimeofday: $!";
"""


def set_clock(dom: libvirt.virDomain) -> None:
    """Set the guest's clock to the host's (to within the agent's round trip, milliseconds)."""
    shift_us = round(-clock_skew(dom) * 1_000_000)
    result = run(dom, ["/usr/bin/perl", "-e", _SHIFT_CLOCK_PERL, str(shift_us)])
    if result.exit_code != 0:
        raise GuestAgentError(f"setting the clock of {dom.name()} failed: {result.stderr.strip()}")


def _exec(dom: libvirt.virDomain, argv: list[str], timeout_s: float, stdin: bytes | None) -> dict:
    """Start `argv` through the agent and poll until it ends: guest-exec-status's last answer."""
    arguments: dict = {"path": argv[0], "arg": argv[1:], "capture-output": True}
    if stdin is not None:
        arguments["input-data"] = base64.b64encode(stdin).decode()
    started = _call(dom, "guest-exec", arguments, int(timeout_s) or 1)
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        status = _call(dom, "guest-exec-status", {"pid": started["pid"]}, int(timeout_s) or 1)
        if status.get("exited"):
            return status
        if time.monotonic() > deadline:
            raise GuestAgentError(
                f"a command through the guest agent of {dom.name()} ran past {timeout_s:.0f} s"
            )
        time.sleep(delay)
        # Short commands (a warm start's identity) end within a second: poll finely.
        delay = min(delay * 2, 0.05)


def _exit_code(status: dict) -> int:
    return status.get("exitcode", -status.get("signal", 1))


def _output(status: dict, stream: str) -> bytes:
    return base64.b64decode(status.get(f"{stream}-data", ""))


def run(
    dom: libvirt.virDomain,
    argv: list[str],
    *,
    timeout_s: float = 30.0,
    stdin: bytes | None = None,
) -> AgentResult:
    """Run `argv` (an absolute path first) as root in the guest and wait for it to end."""
    status = _exec(dom, argv, timeout_s, stdin)
    return AgentResult(
        exit_code=_exit_code(status),
        stdout=_output(status, "out").decode(errors="replace"),
        stderr=_output(status, "err").decode(errors="replace"),
    )


class GuestAgent:
    """A guest's QEMU agent as a Transport (infra/transport/protocol.py): shell commands as
    root before SSH is up. The agent cannot stop a command: past its timeout, run() raises
    GuestAgentError and the command may go on in the guest."""

    def __init__(self, dom: libvirt.virDomain) -> None:
        self.dom = dom

    def run(
        self, command: str, *, timeout: float = 30.0, output_cap: int = 30_000
    ) -> CommandResult:
        """Run `command` with /bin/sh in the guest and wait for it to end; each stream is cut
        from the middle beyond `output_cap` bytes, as over SSH."""
        started_at = datetime.now(UTC)
        t0 = time.monotonic()
        status = _exec(self.dom, ["/bin/sh", "-c", command], timeout, None)
        return CommandResult.ended_now(
            command,
            _exit_code(status),
            _capped(_output(status, "out"), output_cap),
            _capped(_output(status, "err"), output_cap),
            started_at=started_at,
            duration_s=time.monotonic() - t0,
            timed_out=False,
        )


def _capped(data: bytes, cap: int) -> tuple[bytes, int]:
    buffer = CappedBuffer(cap)
    buffer.add(data)
    return buffer.result()
