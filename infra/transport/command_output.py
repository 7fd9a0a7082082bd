"""What a guest command leaves: its result, and the bounded buffers its output passes through.

Guest output is attacker-written and unbounded: a buffer keeps at most its cap (head and tail,
saying how much was cut), a sink hands bytes on up to its limit and counts the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

CUT_MARKER = b"\n[fluid: %d bytes of output cut here]\n"


class CommandResult(BaseModel):
    """Outcome of one guest command; output beyond the cap is cut from the middle."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    command: str
    exit_status: int
    stdout: bytes
    stderr: bytes
    stdout_cut: int
    stderr_cut: int
    started_at: datetime
    ended_at: datetime
    duration_s: float
    timed_out: bool = False

    @classmethod
    def ended_now(
        cls,
        command: str,
        exit_status: int,
        stdout: tuple[bytes, int],
        stderr: tuple[bytes, int],
        *,
        started_at: datetime,
        duration_s: float,
        timed_out: bool,
    ) -> CommandResult:
        """The result of a command that has just ended, from each stream's (kept bytes, bytes
        cut) as a CappedBuffer's `result()` gives them."""
        return cls(
            command=command,
            exit_status=exit_status,
            stdout=stdout[0],
            stderr=stderr[0],
            stdout_cut=stdout[1],
            stderr_cut=stderr[1],
            started_at=started_at,
            ended_at=datetime.now(UTC),
            duration_s=duration_s,
            timed_out=timed_out,
        )

    @property
    def stdout_text(self) -> str:
        """Stdout decoded as UTF-8, invalid bytes replaced."""
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def stderr_text(self) -> str:
        """Stderr decoded as UTF-8, invalid bytes replaced."""
        return self.stderr.decode("utf-8", errors="replace")


class CappedBuffer:
    """Keeps the first and last cap//2 bytes of a stream and counts what falls in between."""

    def __init__(self, cap: int) -> None:
        self._half = cap // 2
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    def add(self, data: bytes) -> None:
        self._total += len(data)
        room = self._half - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data and self._half:
            self._tail += data
            # Trim only once the tail is twice its size, so trimming cost stays amortised.
            if len(self._tail) > 2 * self._half:
                del self._tail[: len(self._tail) - self._half]

    @property
    def over(self) -> bool:
        """Whether more came than the cap keeps."""
        return self._total > 2 * self._half

    def result(self) -> tuple[bytes, int]:
        """Return (kept bytes with the cut marker if anything was dropped, dropped byte count)."""
        tail = self._tail[len(self._tail) - self._half :] if self._half else b""
        cut = self._total - len(self._head) - len(tail)
        if cut:
            return bytes(self._head) + CUT_MARKER % cut + bytes(tail), cut
        return bytes(self._head) + bytes(tail), 0


class OutputSink:
    """Hands a stream's bytes on as they come, at most `limit` of them; counts any more."""

    def __init__(self, take: Callable[[bytes], None], limit: int) -> None:
        self._take = take
        self._limit = limit
        self.total = 0

    def add(self, data: bytes) -> None:
        room = self._limit - self.total
        if room > 0:
            self._take(data[:room])
        self.total += len(data)

    @property
    def over(self) -> bool:
        """Whether more came than the limit."""
        return self.total > self._limit


class StreamResult(BaseModel):
    """Outcome of a streamed command: its stdout went to the caller's sink, not here."""

    exit_status: int
    received: int  # bytes of stdout handed on (at most the limit)
    over: bool  # more than the limit came: the command was ended there
    stderr: bytes
    duration_s: float


def short_command(command: str, limit: int = 200) -> str:
    """A command as an error message names it: cut to `limit` characters."""
    return command if len(command) <= limit else command[: limit - 3] + "..."
