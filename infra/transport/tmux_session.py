"""The agent shell's tmux session in the guest: where its files live, the scripts that set it
up (the shell's rc, tmux's config, starting the session, killing a stuck foreground job), the
control-mode client that types into it, and the argv a human attaches with.

The host side, which submits jobs and waits for them, is infra/transport/guest_shell.py.
"""

from __future__ import annotations

import contextlib
import shlex
import time

import paramiko

from infra.errors import GuestShellError
from infra.transport import ssh

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
TARGET_Q = shlex.quote(TARGET)
_SOCKET_RE = SOCKET.replace(".", "\\.")
NOT_STARTED = "fluid: the agent has not started a shell in this sandbox yet"

# What the session's shell is typed per command; it only names the job, the rest is in the rc.
RUN_LINE = ' __fluid_pre {job} && . "$__fluid_cmd" </dev/null >&$__fluid_o 2>&$__fluid_e'

# Seconds the shell waits for the tees after a command; longer only when a background job
# the command started still holds its stdout or stderr.
TEE_GRACE_S = 3

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

TMUX_CONF = """set -g history-limit 50000
set -g automatic-rename off
set -g allow-rename off
set -g status-left "[fluid: agent shell] "
set -g status-left-length 30
set -g status-right "C-b d detaches"
"""

START_SCRIPT = f"""set -e
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
KILL_FOREGROUND = f"""p=$(tmux -S {SOCKET} display -p -t '{TARGET}' '#{{pane_pid}}') || exit 0
t=$(ps -o tpgid= -p "$p" | tr -d ' ')
if [ -n "$t" ] && [ "$t" -gt 1 ] && [ "$t" != "$p" ]; then kill -KILL -- "-$t"; fi
exit 0
"""


def rc_text(env: dict[str, str]) -> str:
    """The shell's rc file, exporting `env` (names already checked by the caller)."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return _RC_TEMPLATE.format(
        jobs=JOBS_DIR,
        nap=NAP_FIFO,
        pid=PID_FILE,
        line_len=len(RUN_LINE.format(job="")),
        grace_ticks=TEE_GRACE_S * 100,
        exports=exports,
    )


def tmux(*args: str) -> str:
    """A tmux command line on the session's socket, quoted for the guest's shell."""
    return shlex.join(["tmux", "-S", SOCKET, *args])


class SessionGone(Exception):
    """The control client ended: no tmux session (or its connection died)."""


class TmuxControl:
    """A tmux control-mode client on one SSH channel: tmux commands without a process each.

    `timeout` bounds opening the channel and each wait for tmux's answer."""

    def __init__(self, conn: ssh.GuestConnection, timeout: float) -> None:
        self._chan = conn.transport().open_session(timeout=timeout)
        self._chan.settimeout(timeout)
        # ignore-size: a control client must not shrink the window a human watches;
        # no-output: pane output reaches the host through the job files, not this channel.
        attach = ["-C", "attach", "-t", f"={SESSION}", "-f", "ignore-size,no-output"]
        self._chan.exec_command(tmux(*attach))
        self._out = self._chan.makefile("rb")
        # The attach's own reply comes first; without a session tmux prints an error and exits.
        try:
            while not (raw := self._out.readline()).startswith((b"%end ", b"%error ")):
                if not raw:
                    raise SessionGone
            if raw.startswith(b"%error "):
                raise SessionGone
        except (OSError, EOFError, paramiko.SSHException, SessionGone) as exc:
            self.close()
            raise SessionGone from exc

    def command(self, line: str) -> list[bytes]:
        """Send one tmux command; its output lines, GuestShellError if tmux refused it."""
        try:
            self._chan.sendall(line.encode() + b"\n")
            body: list[bytes] | None = None
            while True:
                raw = self._out.readline()
                if not raw:
                    raise SessionGone
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
            raise SessionGone from exc
        except SessionGone:
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
        """Close the client's channel (the session goes on)."""
        self._chan.close()


def attach_argv(ssh_argv: list[str], *, read_write: bool = False) -> list[str]:
    """OpenSSH argv that attaches a terminal to the agent's tmux session (read-only by default),
    from the argv of an OpenSSH session into the sandbox (`sandboxes.ssh_argv`)."""
    attach = ["attach", "-t", f"={SESSION}"] + ([] if read_write else ["-r"])
    remote = (
        f"{tmux('has-session', '-t', f'={SESSION}')} 2>/dev/null || "
        f"{{ echo {shlex.quote(NOT_STARTED)} >&2; exit 1; }}; exec {tmux(*attach)}"
    )
    # ssh takes options only before the destination (the last element).
    return [*ssh_argv[:-1], "-t", ssh_argv[-1], remote]
