"""The agent's persistent shell: one tmux session in the guest that a human can attach to.

Each command is uploaded to a job directory over SFTP and typed into the session (through one
tmux control-mode client, so no process is spawned per command) as a short line that sources
it in the shell itself: `cd`, `export` and variables persist. Its stdin is /dev/null; stdout
and stderr are teed byte for byte into files while the pane shows them live. The shell writes
the exit status once both tees have finished; the host polls for it with SFTP stat and streams
new output lines while it waits. The guest side (the rc, the scripts, the tmux control client)
is infra/transport/tmux_session.py; GuestShell is a Transport (infra/transport/protocol.py).
"""

from __future__ import annotations

import contextlib
import math
import re
import secrets
import shlex
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import paramiko

from infra.errors import CommandTimeout, GuestShellError, SSHError
from infra.transport import ssh
from infra.transport.command_output import CUT_MARKER, CommandResult, short_command
from infra.transport.tmux_session import (
    CONF_FILE,
    JOBS_DIR,
    KILL_FOREGROUND,
    PID_FILE,
    RC_FILE,
    RUN_DIR,
    RUN_LINE,
    START_SCRIPT,
    TARGET_Q,
    TMUX_CONF,
    SessionGone,
    TmuxControl,
    rc_text,
)

FIRST_POLL_S = 0.03
POLL_BACKOFF = 1.25
MAX_POLL_S = 0.5
LIVENESS_EVERY_S = 1.0
# After a timeout: wait this long for Ctrl-C, then for a kill of the foreground job.
INTERRUPT_GRACE_S = 3.0
KILL_GRACE_S = 3.0
SESSION_END_S = 5.0
SFTP_TIMEOUT_S = 15.0
EXEC_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
# Streaming to on_output skips ahead when a stream grows faster than a log can be read.
STREAM_SKIP_BYTES = 1 << 20
STREAM_KEEP_BYTES = 64 << 10
MAX_LINE_BYTES = 64 << 10
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

T = TypeVar("T")


class _Stream:
    """Follows one output file in the guest and hands complete lines to a callback."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def poll(self, sftp: paramiko.SFTPClient, emit: Callable[[str], None]) -> None:
        try:
            size = sftp.stat(self.path).st_size or 0
        except FileNotFoundError:
            return
        if size <= self.offset:
            return
        if size - self.offset > STREAM_SKIP_BYTES:
            skipped = size - STREAM_KEEP_BYTES - self.offset
            emit(f"[fluid: {skipped + len(self.partial)} bytes of output not shown here]")
            self.offset = size - STREAM_KEEP_BYTES
            self.partial = b""
        with sftp.open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > MAX_LINE_BYTES:
            lines.append(self.partial)
            self.partial = b""
        for line in lines:
            emit(_text(line))

    def flush(self, emit: Callable[[str], None]) -> None:
        if self.partial:
            emit(_text(self.partial))
            self.partial = b""


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")


def _read_capped(sftp: paramiko.SFTPClient, path: str, cap: int) -> tuple[bytes, int]:
    """A file's bytes, cut from the middle beyond `cap` exactly as ssh.GuestConnection.run cuts."""
    half = cap // 2
    try:
        f = sftp.open(path, "rb")
    except FileNotFoundError:
        return b"", 0
    with f:
        data = f.read(2 * half + 1)
        if len(data) <= 2 * half:
            return data, 0
        # Only the two ends cross the wire, however much the command printed.
        size = f.stat().st_size or 0
        f.seek(size - half)
        tail = f.read(half)
    cut = size - 2 * half
    return data[:half] + CUT_MARKER % cut + tail, cut


def _remove_job(sftp: paramiko.SFTPClient, jobdir: str) -> None:
    """Remove a job's files; best effort, since /var/lib/fluid is never captured."""
    for name in ("cmd", "out", "err", "rc"):
        with contextlib.suppress(FileNotFoundError):
            sftp.remove(f"{jobdir}/{name}")
    with contextlib.suppress(OSError):
        sftp.rmdir(jobdir)


def _is_connection_failure(conn: ssh.GuestConnection, exc: BaseException) -> bool:
    if isinstance(exc, SSHError | paramiko.SSHException | EOFError | TimeoutError):
        return True
    # Other OSErrors (a missing file, a refused permission) are real answers from the guest.
    return not conn.is_active()


class GuestShell:
    """The agent's persistent shell: one tmux session in the guest (cwd/env persist).

    `connect` opens a GuestConnection; one is kept open across commands and reopened once when
    it dies (e.g. after a checkpoint restore). The session starts on the first run() with
    `env` exported, and again whenever it is gone; it outlives close() so watchers keep it.
    One GuestShell per sandbox at a time: two would type into the same shell. Not thread-safe.
    """

    def __init__(
        self,
        connect: Callable[[], ssh.GuestConnection],
        *,
        env: dict[str, str] | None = None,
    ) -> None:
        for name in env or {}:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"not a valid environment variable name: {name!r}")
        self._connect = connect
        self._env = dict(env or {})
        self._conn: ssh.GuestConnection | None = None
        self._token = secrets.token_hex(4)
        self._seq = 0
        self._reconnects = 0
        self._control: TmuxControl | None = None

    # -- connection -------------------------------------------------------------------------

    def _guest(self) -> ssh.GuestConnection:
        if self._conn is None:
            conn = self._connect()
            try:
                # SFTP calls have no deadline of their own; a guest restored under us must not
                # hang the agent forever.
                conn.sftp_client().get_channel().settimeout(SFTP_TIMEOUT_S)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._conn is not None:
            # A dead connection may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _op(self, fn: Callable[[ssh.GuestConnection], T]) -> T:
        """Run fn on the connection; reopen it once if it died and run fn again."""
        conn = self._guest()
        if not conn.is_active():  # closed under us (e.g. by its owner); no need to fail first
            self._drop()
            self._reconnects += 1
            conn = self._guest()
        try:
            return fn(conn)
        except Exception as exc:
            if not _is_connection_failure(conn, exc):
                raise
        self._drop()
        self._reconnects += 1
        return fn(self._guest())

    @staticmethod
    def _open_control(conn: ssh.GuestConnection) -> TmuxControl:
        return TmuxControl(conn, EXEC_TIMEOUT_S)

    def _sftp(self, fn: Callable[[paramiko.SFTPClient], T]) -> T:
        return self._op(lambda c: fn(c.sftp_client()))

    def _exec(self, script: str) -> CommandResult:
        return self._op(lambda c: c.run(script, timeout=EXEC_TIMEOUT_S))

    # -- the session ------------------------------------------------------------------------

    def _start_session(self) -> None:
        r = self._exec(f"mkdir -p -m 0700 {RUN_DIR} {JOBS_DIR}")
        if r.exit_status != 0:
            raise GuestShellError(f"cannot create {RUN_DIR} in the guest: {r.stderr_text.strip()}")
        self._op(lambda c: c.upload_bytes(rc_text(self._env).encode(), RC_FILE, 0o600))
        self._op(lambda c: c.upload_bytes(TMUX_CONF.encode(), CONF_FILE, 0o600))
        r = self._op(lambda c: c.run(START_SCRIPT, timeout=START_TIMEOUT_S))
        if r.exit_status != 0:
            raise GuestShellError(
                f"cannot start the agent's tmux session in the guest: "
                f"{(r.stderr_text or r.stdout_text).strip()}; the golden image needs tmux and bash"
            )

    def _tmux_command(self, line: str, *, start: bool = True) -> None:
        """Run a tmux command in the session; start the session first if it is gone."""
        for attempt in range(2):
            try:
                if self._control is None:
                    self._control = self._op(self._open_control)
                self._control.command(line)
                return
            except SessionGone:
                self._control = None
                if self._conn is None or not self._conn.is_active():
                    self._drop()
                    self._reconnects += 1
                elif not start or attempt:
                    raise GuestShellError(
                        "the agent's tmux session is gone and could not be reached again"
                    ) from None
                else:
                    # No session: first use, `exit`, a timeout that ended it, or a restore.
                    self._start_session()
        raise GuestShellError("lost the SSH connection to the sandbox twice while typing")

    def _submit(self, job: str, command: str) -> None:
        jobdir = f"{JOBS_DIR}/{job}"

        def put(sftp: paramiko.SFTPClient) -> bool:
            try:
                sftp.mkdir(jobdir, 0o700)
            except FileNotFoundError:
                return False  # first use, or a guest reset: no JOBS_DIR yet
            with sftp.open(f"{jobdir}/cmd", "wb") as f:
                f.write(command.encode())
            return True

        if not self._sftp(put):
            self._start_session()
            if not self._sftp(put):
                raise GuestShellError(f"cannot create {jobdir} in the guest")
        # One tmux command: the line and Enter arrive together, never half typed.
        self._tmux_command(
            f"send-keys -t {TARGET_Q} -l {shlex.quote(RUN_LINE.format(job=job))} ; "
            f"send-keys -t {TARGET_Q} Enter"
        )

    # -- waiting ----------------------------------------------------------------------------

    def _status(self, jobdir: str) -> int | None:
        """The job's exit status once the shell wrote it, else None."""

        def read(sftp: paramiko.SFTPClient) -> bytes | None:
            try:
                if not sftp.stat(f"{jobdir}/rc").st_size:
                    return None
                with sftp.open(f"{jobdir}/rc", "rb") as f:
                    return f.read(64)
            except FileNotFoundError:
                return None

        text = self._sftp(read)
        if text is None or not text.endswith(b"\n"):
            return None
        status, _, how = text.decode().partition(" ")
        if how.strip() == "exit" and self._control is not None:
            # The command ran `exit`: wait until the session is gone, so the next command is
            # not typed into the dying one; the next run() starts a fresh shell.
            self._control.drain(SESSION_END_S)
            self._control = None
        return int(status)

    def _kill_session(self) -> None:
        """End the session and every process left in its terminal (the shell is stuck)."""
        pane_pid = b""
        with contextlib.suppress(SessionGone, GuestShellError):
            if self._control is None:
                self._control = self._op(self._open_control)
            pane_pid = b"".join(self._control.command(f"display -p -t {TARGET_Q} '#{{pane_pid}}'"))
            with contextlib.suppress(SessionGone):
                self._control.command("kill-server")
        if self._control is not None:
            self._control.drain(SESSION_END_S)
            self._control = None
        if pane_pid.strip().isdigit():
            # The pane's shell led its terminal's session; whatever it started is still in it.
            self._exec(f"pkill -KILL -s {int(pane_pid)}; true")

    def _shell_alive(self) -> bool:
        def check(sftp: paramiko.SFTPClient) -> bool:
            try:
                with sftp.open(PID_FILE, "rb") as f:
                    pid = int(f.read(32))
                sftp.stat(f"/proc/{pid}")
            except (FileNotFoundError, ValueError):
                return False
            return True

        return self._sftp(check)

    def _job_exists(self, jobdir: str) -> bool:
        def check(sftp: paramiko.SFTPClient) -> bool:
            try:
                sftp.stat(jobdir)
            except FileNotFoundError:
                return False
            return True

        return self._sftp(check)

    def _wait(
        self,
        jobdir: str,
        deadline: float,
        streams: list[_Stream],
        on_output: Callable[[str], None] | None,
    ) -> tuple[int | None, str | None]:
        """Poll until the job's status appears or the deadline passes: (status, why it died)."""
        delay = FIRST_POLL_S
        next_check = time.monotonic() + LIVENESS_EVERY_S
        reconnects = self._reconnects
        while True:
            status = self._status(jobdir)
            if on_output is not None:
                for s in streams:
                    self._sftp(lambda sftp, s=s: s.poll(sftp, on_output))
            if status is not None:
                return status, None
            now = time.monotonic()
            if self._reconnects != reconnects:
                reconnects = self._reconnects
                if not self._job_exists(jobdir):
                    return None, (
                        "the connection dropped and the command's files are gone from the guest: "
                        "the sandbox was restored or restarted while the command ran, so its "
                        "effects may be undone; run it again"
                    )
            if now >= next_check:
                next_check = now + LIVENESS_EVERY_S
                if not self._shell_alive():
                    status = self._status(jobdir)  # the shell may have written it as it ended
                    if status is not None:
                        return status, None
                    return None, (
                        "the agent's shell ended before the command finished (it was killed or "
                        "replaced with exec); a fresh shell starts with the next command, with "
                        "the working directory and environment reset"
                    )
            if now >= deadline:
                return None, None
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * POLL_BACKOFF, MAX_POLL_S)

    def _poll_status(self, jobdir: str, seconds: float) -> int | None:
        deadline = time.monotonic() + seconds
        while True:
            status = self._status(jobdir)
            if status is not None or time.monotonic() >= deadline:
                return status
            time.sleep(0.1)

    def _interrupt(self, jobdir: str) -> tuple[int | None, bool]:
        """Stop a command past its timeout: (its status if the shell wrote one, shell restarted)."""
        # A session that ended meanwhile is no error: the status, if any, tells what happened.
        with contextlib.suppress(GuestShellError):
            self._tmux_command(f"send-keys -t {TARGET_Q} C-c", start=False)
        status = self._poll_status(jobdir, INTERRUPT_GRACE_S)
        if status is None:
            self._exec(KILL_FOREGROUND)
            status = self._poll_status(jobdir, KILL_GRACE_S)
        if status is not None:
            return status, False
        # The shell itself is stuck (e.g. a builtin loop that ignores SIGINT).
        self._kill_session()
        return None, True

    # -- the API ----------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float,
        output_cap: int = 64_000,
        on_output: Callable[[str], None] | None = None,
    ) -> CommandResult:
        """Run a command in the shell: exact stdout/stderr bytes and exit status.

        Output lines go to `on_output` while the command runs. Past `timeout` seconds the
        command gets Ctrl-C (then SIGKILL) and CommandTimeout is raised with the partial
        result; GuestShellError if the shell died without an exit status.
        """
        if timeout <= 0 or not math.isfinite(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        if output_cap < 0:
            raise ValueError(f"output_cap must not be negative, got {output_cap}")
        self._seq += 1
        job = f"{self._token}-{self._seq}"
        jobdir = f"{JOBS_DIR}/{job}"
        streams = [_Stream(f"{jobdir}/out"), _Stream(f"{jobdir}/err")]
        # The timeout covers the command, not connecting or starting the session.
        self._submit(job, command)
        started_at = datetime.now(UTC)
        t0 = time.monotonic()
        status, died = self._wait(jobdir, t0 + timeout, streams, on_output)
        timed_out = status is None and died is None
        restarted = False
        if timed_out:
            status, restarted = self._interrupt(jobdir)
        duration_s = time.monotonic() - t0
        if on_output is not None:
            for s in streams:
                self._sftp(lambda sftp, s=s: s.poll(sftp, on_output))
                s.flush(on_output)
        stdout = self._sftp(lambda sftp: _read_capped(sftp, f"{jobdir}/out", output_cap))
        stderr = self._sftp(lambda sftp: _read_capped(sftp, f"{jobdir}/err", output_cap))
        self._sftp(lambda sftp: _remove_job(sftp, jobdir))
        result = CommandResult.ended_now(
            command,
            -1 if status is None else status,
            stdout,
            stderr,
            started_at=started_at,
            duration_s=duration_s,
            timed_out=timed_out,
        )
        if died is not None:
            raise GuestShellError(f"{died} (command {short_command(command)!r})", result=result)
        if timed_out:
            how = (
                "the shell did not respond to Ctrl-C or SIGKILL and was restarted: the working "
                "directory and environment are reset"
                if restarted
                else "it was interrupted; the shell and its state are kept"
            )
            raise CommandTimeout(
                f"command {short_command(command)!r} ran past its {timeout:g} s timeout and {how}; "
                "pass a larger timeout if it legitimately needs longer (partial output is in "
                ".result)",
                result=result,
            )
        return result

    def close(self) -> None:
        """Close the connection; the tmux session stays for watchers and the next GuestShell."""
        self._drop()

    def __enter__(self) -> GuestShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
