"""The agent's persistent shell: one tmux session in the guest that a human can attach to.

Each command is uploaded to a job directory over SFTP and typed into the session (through one
tmux control-mode client, so no process is spawned per command) as a short line that sources
it in the shell itself: `cd`, `export` and variables persist. Its stdin is /dev/null; stdout
and stderr are teed byte for byte into files while the pane shows them live. The shell writes
the exit status once both tees have finished; the host polls for it with SFTP stat and streams
new output lines while it waits.
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
from pathlib import Path
from typing import TypeVar

import paramiko

from infra.errors import CommandTimeout, GuestShellError, SSHError
from infra.machines import sandboxes
from infra.settings import FluidSettings
from infra.transport import ssh
from infra.transport.command_output import CUT_MARKER, CommandResult, short_command

# tmpfs, wiped at boot like the tmux server itself; /run is never captured (state/noise.py).
RUN_DIR = "/run/fluid-shell"
SOCKET = f"{RUN_DIR}/tmux.sock"
RC_FILE = f"{RUN_DIR}/rc"
CONF_FILE = f"{RUN_DIR}/tmux.conf"
PID_FILE = f"{RUN_DIR}/pid"
NAP_FIFO = f"{RUN_DIR}/nap"
# Output files live on disk: /run is a small tmpfs (10% of RAM) that a chatty command would
# fill. /var/lib/fluid is never captured either (state/noise.py SKIP_TREES).
JOBS_DIR = "/var/lib/fluid/shell"
SESSION = "fluid"
# The session's first pane, by exact session name, whatever windows a human opens beside it.
TARGET = f"={SESSION}:0.0"
_TARGET_Q = shlex.quote(TARGET)
_SOCKET_RE = SOCKET.replace(".", "\\.")
NOT_STARTED = "fluid: the agent has not started a shell in this sandbox yet"

# What the session's shell is typed per command; it only names the job, the rest is in the rc.
_RUN_LINE = ' __fluid_pre {job} && . "$__fluid_cmd" </dev/null >&$__fluid_o 2>&$__fluid_e'
# Seconds the shell waits for the tees after a command; longer only when a background job
# the command started still holds its stdout or stderr.
TEE_GRACE_S = 3
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

# Nothing here writes under $HOME: fluid diffs the guest.
_RC_TEMPLATE = r"""# fluid: the agent's shell.
unset HISTFILE
HISTCONTROL=ignorespace
PS1='\u@\h:\w\$ '
__fluid_jobs={jobs}
__fluid_line_len={line_len}
# A FIFO nobody writes: `read -t` on it sleeps without forking a process.
exec {{__fluid_nap}}<>{nap}
__fluid_dir=
__fluid_last=
__fluid_pre() {{
  # A job runs once, and only when none is running (a resent line is a no-op).
  [[ -z ${{__fluid_dir-}} && ${{1-}} != "${{__fluid_last-}}" && -f $__fluid_jobs/${{1-}}/cmd ]] \
    || return 97
  __fluid_last=$1
  if [[ -n ${{__fluid_noecho-}} ]]; then stty echo 2>/dev/null; __fluid_noecho=; fi
  __fluid_dir=$__fluid_jobs/$1
  __fluid_cmd=$__fluid_dir/cmd
  local c p=${{PS1@P}} cols=${{COLUMNS:-80}}
  IFS= read -r -d '' c <"$__fluid_cmd"
  # Replace the typed line (prompt + job line, maybe wrapped) with the command itself.
  local rows=$(( (${{#p}} + ${{#1}} + __fluid_line_len - 1) / cols + 1 ))
  printf '\e[%dA\r\e[J' "$rows"
  # Background jobs that ended since: reported here, in the pane, as a prompt would; else
  # bash reports them while the command runs, into the command's stderr.
  jobs -n
  printf '\e[1m$ %s\e[0m\n' "${{c//$'\n'/$'\n'> }}"
  history -s -- "$c"
  # Ctrl-C (a timeout) must not kill the tees, or output would be lost.
  exec {{__fluid_o}}> >(trap '' INT; exec tee -- "$__fluid_dir/out")
  __fluid_po=$!
  exec {{__fluid_e}}> >(trap '' INT; exec tee -- "$__fluid_dir/err" >&2)
  __fluid_pe=$!
}}
# Whether a process runs (not a zombie: the shell may reap its procsubs only much later).
__fluid_alive() {{
  local _p _c st
  read -r _p _c st _ 2>/dev/null <"/proc/$1/stat" && [[ $st != Z ]]
}}
__fluid_finish() {{
  local s=$1 d=${{__fluid_dir-}} i
  [[ -n $d ]] || return "$s"
  __fluid_dir=
  # On `exit` the command's redirections are still in place: drop them too.
  [[ ${{2-}} == exit ]] && exec >/dev/null 2>&1
  exec {{__fluid_o}}>&- {{__fluid_e}}>&-
  # The tees end at EOF; only a background job that kept stdout or stderr delays them.
  for ((i = 0; i < {grace_ticks}; i++)); do
    __fluid_alive "$__fluid_po" || __fluid_alive "$__fluid_pe" || break
    read -r -t 0.01 -u "$__fluid_nap"
  done
  # One write(2) of a short line: the host never sees a partial status. "exit": the shell ends.
  printf '%s%s\n' "$s" "${{2:+ $2}}" >"$d/rc"
  # Output without a final newline: start the prompt on a line of its own (as zsh does).
  [[ ${{2-}} == exit ]] || printf '\e[2m%%\e[0m%*s\r\e[K' $(( ${{COLUMNS:-80}} - 1 )) ''
}}
PROMPT_COMMAND='__fluid_finish $?'
readonly PROMPT_COMMAND
trap '__fluid_finish $? exit' EXIT
{exports}# The first job line may come before readline owns the terminal: no echo of it until then.
stty -echo 2>/dev/null && __fluid_noecho=1
printf '%s\n' $$ >{pid}
"""

_TMUX_CONF = """set -g history-limit 50000
set -g automatic-rename off
set -g allow-rename off
set -g status-left "[fluid: agent shell] "
set -g status-left-length 30
set -g status-right "C-b d detaches"
"""

_START = f"""set -e
if tmux -S {SOCKET} has-session -t ={SESSION} 2>/dev/null; then exit 0; fi
command -v tmux >/dev/null || {{ echo "tmux is not installed in the guest" >&2; exit 3; }}
# No session: a server still on the socket is one left exiting (it waits forever for a control
# client whose connection was lost) and would refuse every new client.
pkill -KILL -f '^tmux -S {_SOCKET_RE}( |$)' || true
rm -f {SOCKET} {PID_FILE} {NAP_FIFO}
mkfifo -m 0600 {NAP_FIFO}
tmux -S {SOCKET} -f {CONF_FILE} new-session -d -s {SESSION} -x 200 -y 50 \\
  'exec bash --noprofile --rcfile {RC_FILE} -i'
for i in $(seq 100); do [ -s {PID_FILE} ] && exit 0; sleep 0.1; done
echo "the shell did not start within 10 s" >&2
exit 4
"""

# After Ctrl-C did not end the command: kill the terminal's foreground job (not the shell).
_KILL_FOREGROUND = f"""p=$(tmux -S {SOCKET} display -p -t '{TARGET}' '#{{pane_pid}}') || exit 0
t=$(ps -o tpgid= -p "$p" | tr -d ' ')
if [ -n "$t" ] && [ "$t" -gt 1 ] && [ "$t" != "$p" ]; then kill -KILL -- "-$t"; fi
exit 0
"""


def _rc_text(env: dict[str, str]) -> str:
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return _RC_TEMPLATE.format(
        jobs=JOBS_DIR,
        nap=NAP_FIFO,
        pid=PID_FILE,
        line_len=len(_RUN_LINE.format(job="")),
        grace_ticks=TEE_GRACE_S * 100,
        exports=exports,
    )


def _tmux(*args: str) -> str:
    return shlex.join(["tmux", "-S", SOCKET, *args])


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


class _SessionGone(Exception):
    """The control client ended: no tmux session (or its connection died)."""


class _Control:
    """A tmux control-mode client on one SSH channel: tmux commands without a process each."""

    def __init__(self, conn: ssh.GuestConnection) -> None:
        self._chan = conn.transport().open_session(timeout=EXEC_TIMEOUT_S)
        self._chan.settimeout(EXEC_TIMEOUT_S)
        # ignore-size: a control client must not shrink the window a human watches;
        # no-output: pane output reaches the host through the job files, not this channel.
        attach = ["-C", "attach", "-t", f"={SESSION}", "-f", "ignore-size,no-output"]
        self._chan.exec_command(_tmux(*attach))
        self._out = self._chan.makefile("rb")
        # The attach's own reply comes first; without a session tmux prints an error and exits.
        try:
            while not (raw := self._out.readline()).startswith((b"%end ", b"%error ")):
                if not raw:
                    raise _SessionGone
            if raw.startswith(b"%error "):
                raise _SessionGone
        except (OSError, EOFError, paramiko.SSHException, _SessionGone) as exc:
            self.close()
            raise _SessionGone from exc

    def command(self, line: str) -> list[bytes]:
        """Send one tmux command; its output lines, GuestShellError if tmux refused it."""
        try:
            self._chan.sendall(line.encode() + b"\n")
            body: list[bytes] | None = None
            while True:
                raw = self._out.readline()
                if not raw:
                    raise _SessionGone
                # Notifications (%window-renamed, ...) arrive between replies; skip them.
                if raw.startswith(b"%begin ") and raw.split()[-1] == b"1":
                    body = []
                elif body is not None and raw.startswith((b"%end ", b"%error ")):
                    if raw.startswith(b"%error "):
                        text = b" ".join(body).decode(errors="replace").strip()
                        raise GuestShellError(f"tmux refused {line!r}: {text}")
                    return body
                elif body is not None:
                    body.append(raw)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise _SessionGone from exc
        except _SessionGone:
            self.close()
            raise

    def drain(self, seconds: float) -> None:
        """Read until the client exits (the session ended) or `seconds` pass, then close.

        A control client must see the server's goodbye: one whose output is cut off while the
        server exits leaves the server waiting for it, refusing new clients.
        """
        deadline = time.monotonic() + seconds
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while time.monotonic() < deadline:
                self._chan.settimeout(max(0.1, deadline - time.monotonic()))
                if not self._chan.recv(65536):
                    break
        self.close()

    def close(self) -> None:
        self._chan.close()


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
        self._control: _Control | None = None

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

    def _sftp(self, fn: Callable[[paramiko.SFTPClient], T]) -> T:
        return self._op(lambda c: fn(c.sftp_client()))

    def _exec(self, script: str) -> CommandResult:
        return self._op(lambda c: c.run(script, timeout=EXEC_TIMEOUT_S))

    # -- the session ------------------------------------------------------------------------

    def _start_session(self) -> None:
        r = self._exec(f"mkdir -p -m 0700 {RUN_DIR} {JOBS_DIR}")
        if r.exit_status != 0:
            raise GuestShellError(f"cannot create {RUN_DIR} in the guest: {r.stderr_text.strip()}")
        self._op(lambda c: c.upload_bytes(_rc_text(self._env).encode(), RC_FILE, 0o600))
        self._op(lambda c: c.upload_bytes(_TMUX_CONF.encode(), CONF_FILE, 0o600))
        r = self._op(lambda c: c.run(_START, timeout=START_TIMEOUT_S))
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
                    self._control = self._op(_Control)
                self._control.command(line)
                return
            except _SessionGone:
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
            f"send-keys -t {_TARGET_Q} -l {shlex.quote(_RUN_LINE.format(job=job))} ; "
            f"send-keys -t {_TARGET_Q} Enter"
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
        with contextlib.suppress(_SessionGone, GuestShellError):
            if self._control is None:
                self._control = self._op(_Control)
            pane_pid = b"".join(self._control.command(f"display -p -t {_TARGET_Q} '#{{pane_pid}}'"))
            with contextlib.suppress(_SessionGone):
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
            self._tmux_command(f"send-keys -t {_TARGET_Q} C-c", start=False)
        status = self._poll_status(jobdir, INTERRUPT_GRACE_S)
        if status is None:
            self._exec(_KILL_FOREGROUND)
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
        out, out_cut = self._sftp(lambda sftp: _read_capped(sftp, f"{jobdir}/out", output_cap))
        err, err_cut = self._sftp(lambda sftp: _read_capped(sftp, f"{jobdir}/err", output_cap))
        self._sftp(lambda sftp: _remove_job(sftp, jobdir))
        result = CommandResult(
            command=command,
            exit_status=-1 if status is None else status,
            stdout=out,
            stderr=err,
            stdout_cut=out_cut,
            stderr_cut=err_cut,
            started_at=started_at,
            ended_at=datetime.now(UTC),
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


def attach_argv(
    sandbox_id: str,
    workdir: Path,
    *,
    read_write: bool = False,
    settings: FluidSettings | None = None,
) -> list[str]:
    """OpenSSH argv that attaches a terminal to the agent's tmux session (read-only by default).

    A fresh certificate is written into `workdir` (keep it private; remove it afterwards).
    """
    argv = sandboxes.ssh_argv(sandbox_id, workdir, settings)
    attach = ["attach", "-t", f"={SESSION}"] + ([] if read_write else ["-r"])
    remote = (
        f"{_tmux('has-session', '-t', f'={SESSION}')} 2>/dev/null || "
        f"{{ echo {shlex.quote(NOT_STARTED)} >&2; exit 1; }}; exec {_tmux(*attach)}"
    )
    # ssh takes options only before the destination (the last element).
    return [*argv[:-1], "-t", argv[-1], remote]
