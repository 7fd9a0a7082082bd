"""The agent's persistent shell: one tmux session in a real sandbox that a human can attach to."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import shlex
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.errors import CommandTimeout
from infra.host import images
from infra.machines import checkpoints, sandboxes
from infra.settings import FluidSettings
from infra.transport import ssh
from infra.transport.guest_shell import GuestShell
from infra.transport.tmux_session import JOBS_DIR, NOT_STARTED, SOCKET, TARGET, attach_argv
from tests.conftest import FLUID

pytestmark = pytest.mark.vm

NAME = "t-shell"


@pytest.fixture(scope="module")
def sandbox(
    golden_image: images.ImageManifest, settings: FluidSettings
) -> Iterator[sandboxes.Sandbox]:
    sb = sandboxes.create(NAME, settings=settings)
    try:
        yield sb
    finally:
        sandboxes.destroy(sb.id, settings)


class Connector:
    """connect() for GuestShell that remembers every connection it opened."""

    def __init__(self, sandbox_id: str, settings: FluidSettings) -> None:
        self.sandbox_id = sandbox_id
        self.settings = settings
        self.opened: list[ssh.GuestConnection] = []

    def __call__(self) -> ssh.GuestConnection:
        conn = sandboxes.guest(self.sandbox_id, self.settings)
        self.opened.append(conn)
        return conn


@pytest.fixture(scope="module")
def connector(sandbox: sandboxes.Sandbox, settings: FluidSettings) -> Connector:
    return Connector(sandbox.id, settings)


@pytest.fixture(scope="module")
def shell(connector: Connector) -> Iterator[GuestShell]:
    with GuestShell(connector, env={"FLUID_TEST_GREETING": "hello 'quoted' world"}) as sh:
        yield sh


@pytest.fixture
def guest(sandbox: sandboxes.Sandbox, settings: FluidSettings) -> Iterator[ssh.GuestConnection]:
    """A plain connection for looking at the guest from outside the shell (one per test: a
    checkpoint restore cuts connections)."""
    with sandboxes.guest(sandbox.id, settings) as conn:
        yield conn


def pane(guest: ssh.GuestConnection) -> str:
    """What a watcher sees in the agent's pane (its whole scrollback)."""
    r = guest.run(f"tmux -S {SOCKET} capture-pane -p -S - -t '{TARGET}'", timeout=30)
    assert r.exit_status == 0, r.stderr_text
    return r.stdout_text


class Terminal:
    """A real pseudo-terminal running a command, as a human's terminal would."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.screen = b""

    def read_until(self, needle: bytes, timeout: float) -> bool:
        """Collect output until `needle` appears (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while needle not in self.screen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # the other side closed
                    break
        return needle in self.screen

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.read_until(b"\0never", 0.5)
            os.close(self.master)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)


# -- watching: fluid attach (first, while the agent has no shell yet) ----------------------


def test_attach_before_the_agent_has_a_shell_says_so(
    sandbox: sandboxes.Sandbox, guest: ssh.GuestConnection
) -> None:
    guest.run(f"tmux -S {SOCKET} kill-server", timeout=30)  # whatever an earlier test left
    term = Terminal([FLUID, "attach", sandbox.id])
    try:
        assert term.read_until(NOT_STARTED.encode(), 60), term.screen
        assert term.wait(30) == 1
    finally:
        term.kill()


# -- the shell keeps its state -----------------------------------------------------------------


def test_cd_persists_between_commands(shell: GuestShell) -> None:
    assert shell.run("cd /tmp", timeout=60).exit_status == 0
    assert shell.run("pwd", timeout=60).stdout == b"/tmp\n"


def test_export_and_plain_variables_persist(shell: GuestShell) -> None:
    shell.run("export A=1; declare B=2; C=3", timeout=60)
    r = shell.run('echo "$A $B $C"; sh -c \'echo "child sees A=$A"\'', timeout=60)
    assert r.stdout == b"1 2 3\nchild sees A=1\n"


def test_env_given_to_the_shell_is_exported(shell: GuestShell) -> None:
    r = shell.run("sh -c 'printf %s \"$FLUID_TEST_GREETING\"'", timeout=60)
    assert r.stdout == b"hello 'quoted' world"


def test_nothing_is_written_to_roots_home(shell: GuestShell, guest: ssh.GuestConnection) -> None:
    shell.run("echo something for the history", timeout=60)
    r = guest.run("ls -A /root", timeout=30)
    assert ".bash_history" not in r.stdout_text.split()


# -- exit status and output are exact ----------------------------------------------------------


def test_exit_status_is_exact(shell: GuestShell) -> None:
    assert shell.run("(exit 3)", timeout=60).exit_status == 3
    assert shell.run("false", timeout=60).exit_status == 1
    assert shell.run("true", timeout=60).exit_status == 0
    assert shell.run("no-such-command-xyz", timeout=60).exit_status == 127


def test_output_without_a_trailing_newline_is_exact(shell: GuestShell) -> None:
    r = shell.run("printf 'no newline'", timeout=60)
    assert (r.stdout, r.stderr) == (b"no newline", b"")


def test_binary_and_nul_bytes_are_exact(shell: GuestShell) -> None:
    assert shell.run(r"printf 'a\x00b\xff'", timeout=60).stdout == b"a\x00b\xff"


def test_stdout_and_stderr_are_kept_apart(shell: GuestShell) -> None:
    r = shell.run("echo out; echo err >&2; echo out2", timeout=60)
    assert (r.stdout, r.stderr) == (b"out\nout2\n", b"err\n")


def test_multi_line_command_and_heredoc(shell: GuestShell) -> None:
    command = "x=5\nif [ $x -gt 3 ]; then\n  echo big\nfi\ncat <<'EOF'\n$x stays\nEOF"
    r = shell.run(command, timeout=60)
    assert r.stdout == b"big\n$x stays\n"
    assert r.exit_status == 0


def test_stdin_is_empty_so_nothing_waits_for_input(shell: GuestShell) -> None:
    r = shell.run("cat; read -r line; echo read=$?", timeout=60)
    assert r.stdout == b"read=1\n"


def test_output_is_capped_from_the_middle_exactly_like_guest_connection_run(
    shell: GuestShell, guest: ssh.GuestConnection
) -> None:
    command = "seq 1 20000; seq 1 3000 >&2"
    mine = shell.run(command, timeout=60, output_cap=1001)
    plain = guest.run(command, timeout=60, output_cap=1001)
    assert (mine.stdout, mine.stdout_cut) == (plain.stdout, plain.stdout_cut)
    assert (mine.stderr, mine.stderr_cut) == (plain.stderr, plain.stderr_cut)
    assert mine.stdout_cut > 0 and mine.stderr_cut > 0


# -- timeouts, exit, a dead connection ---------------------------------------------------------


def test_a_timeout_interrupts_the_command_and_keeps_the_shell(shell: GuestShell) -> None:
    shell.run("cd /var; export KEPT=yes", timeout=60)
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        shell.run("echo started; sleep 120; echo never", timeout=3)
    assert time.monotonic() - t0 < 60
    partial = caught.value.result
    assert isinstance(partial, ssh.CommandResult)
    assert partial.timed_out and partial.stdout == b"started\n"
    assert "interrupted" in str(caught.value)
    assert shell.run('pwd; echo "$KEPT"', timeout=60).stdout == b"/var\nyes\n"


def test_a_command_that_ignores_ctrl_c_is_killed(shell: GuestShell) -> None:
    with pytest.raises(CommandTimeout) as caught:
        shell.run("trap '' INT; sleep 120", timeout=3)
    assert caught.value.result.exit_status == 137  # type: ignore[attr-defined]
    assert shell.run("echo still here", timeout=60).stdout == b"still here\n"


def test_a_stuck_shell_is_replaced_by_a_fresh_one(shell: GuestShell) -> None:
    shell.run("cd /etc", timeout=60)
    with pytest.raises(CommandTimeout) as caught:
        shell.run("trap '' INT; while :; do :; done", timeout=3)
    assert "restarted" in str(caught.value)
    r = shell.run("pwd", timeout=120)
    assert r.stdout == b"/root\n"


def test_exit_reports_its_status_and_the_next_command_gets_a_fresh_shell(
    shell: GuestShell,
) -> None:
    shell.run("cd /usr", timeout=60)
    r = shell.run("echo bye; exit 4", timeout=60)
    assert (r.exit_status, r.stdout) == (4, b"bye\n")
    assert shell.run("pwd", timeout=120).stdout == b"/root\n"
    assert shell.run("echo $FLUID_TEST_GREETING", timeout=60).stdout == b"hello 'quoted' world\n"


def test_a_background_job_holding_stdout_does_not_block_the_command(shell: GuestShell) -> None:
    t0 = time.monotonic()
    r = shell.run("sleep 60 & echo started", timeout=60)
    assert r.stdout == b"started\n"
    assert time.monotonic() - t0 < 30
    # Waited for, so the next test's job is %1 and no late "Terminated" line is left over.
    shell.run("kill %1; wait %1", timeout=60)


def test_a_background_job_that_ended_is_not_reported_in_a_later_commands_stderr(
    shell: GuestShell, guest: ssh.GuestConnection
) -> None:
    # A job that ends a second after it is told to, while the shell waits at its prompt: bash
    # reports it once a foreground process ends, i.e. while a later command runs.
    job = "sh -c 'trap \"sleep 1; exit 1\" TERM; while :; do sleep 0.2; done' & echo $!"
    pid = int(shell.run(job, timeout=60).stdout)
    shell.run("kill %1", timeout=60)
    # Until the shell has reaped it (a loaded TCG guest can take seconds), it has not ended.
    deadline = time.monotonic() + 60
    while guest.run(f"test -e /proc/{pid}", timeout=30).exit_status == 0:
        assert time.monotonic() < deadline, "the job did not end within 60 s of its kill"
        time.sleep(0.5)
    assert shell.run("pwd", timeout=60).stderr == b""
    r = shell.run("sleep 0; echo next", timeout=60)
    assert (r.stdout, r.stderr) == (b"next\n", b"")


def test_a_closed_connection_is_reopened(shell: GuestShell, connector: Connector) -> None:
    shell.run("cd /srv", timeout=60)
    before = len(connector.opened)
    connector.opened[-1].close()  # as a checkpoint restore would cut it
    assert shell.run("pwd", timeout=60).stdout == b"/srv\n"
    assert len(connector.opened) == before + 1


def test_after_a_checkpoint_restore_the_shell_is_the_one_from_the_checkpoint(
    shell: GuestShell, sandbox: sandboxes.Sandbox, settings: FluidSettings
) -> None:
    shell.run("cd /srv; export PHASE=checkpointed", timeout=60)
    checkpoints.create(sandbox.id, "shell-cp", settings, capture=False)
    shell.run("cd /opt; export PHASE=later", timeout=60)
    checkpoints.restore(sandbox.id, "shell-cp", settings)
    # The shell's connection died with the restore; it is reopened without being told.
    r = shell.run('pwd; echo "$PHASE"', timeout=60)
    assert r.stdout == b"/srv\ncheckpointed\n"


def test_job_files_are_removed(shell: GuestShell, guest: ssh.GuestConnection) -> None:
    shell.run("echo tidy", timeout=60)
    assert guest.run(f"ls -A {JOBS_DIR}", timeout=30).stdout == b""


# -- watching live -----------------------------------------------------------------------------


def test_output_streams_before_the_command_ends(shell: GuestShell) -> None:
    seen: list[tuple[float, str]] = []
    shell.run(
        "for i in 1 2 3; do echo line$i; sleep 2; done; printf tail",
        timeout=120,
        on_output=lambda line: seen.append((time.monotonic(), line)),
    )
    done = time.monotonic()
    assert [line for _, line in seen] == ["line1", "line2", "line3", "tail"]
    assert done - seen[0][0] > 3  # line1 arrived while the command still ran


def test_the_pane_shows_each_command_and_its_output(
    shell: GuestShell, guest: ssh.GuestConnection
) -> None:
    shell.run("echo pane-marker-1; echo pane-err-1 >&2", timeout=60)
    shown = pane(guest)
    after = shown.split("$ echo pane-marker-1; echo pane-err-1 >&2\n", 1)[1]
    # Two streams reach the pane side by side, so only their lines, not their order, are fixed.
    assert sorted(after.splitlines()[:2]) == ["pane-err-1", "pane-marker-1"]
    assert "__fluid_pre" not in shown  # the typed job line is replaced by the command


def test_attach_watches_read_only_and_detaches(
    sandbox: sandboxes.Sandbox, shell: GuestShell, guest: ssh.GuestConnection
) -> None:
    shell.run("echo attach-marker-2", timeout=60)
    term = Terminal([FLUID, "attach", sandbox.id])
    try:
        assert term.read_until(b"attach-marker-2", 60), term.screen
        term.type(b"touch /tmp/typed-by-a-watcher\r")
        time.sleep(2)
        term.type(b"\x02d")  # C-b d
        assert term.wait(30) == 0
    finally:
        term.kill()
    assert guest.run("test -e /tmp/typed-by-a-watcher", timeout=30).exit_status == 1
    assert "typed-by-a-watcher" not in pane(guest)
    # The agent's shell is untouched by the watcher.
    assert shell.run("echo after-watch", timeout=60).stdout == b"after-watch\n"


def test_attach_rw_takes_over_the_shell(
    sandbox: sandboxes.Sandbox, shell: GuestShell, guest: ssh.GuestConnection
) -> None:
    shell.run("echo rw-marker-3", timeout=60)
    term = Terminal([FLUID, "attach", sandbox.id, "--rw"])
    try:
        assert term.read_until(b"rw-marker-3", 60), term.screen
        term.type(b"touch /tmp/typed-by-a-human\r")
        deadline = time.monotonic() + 30
        while guest.run("test -e /tmp/typed-by-a-human", timeout=30).exit_status:
            assert time.monotonic() < deadline, "the typed command never ran"
            time.sleep(0.5)
        term.type(b"\x02d")
        assert term.wait(30) == 0
    finally:
        term.kill()
    assert shell.run("echo agent-again", timeout=60).stdout == b"agent-again\n"


def test_attach_argv_is_read_only_unless_asked(sandbox: sandboxes.Sandbox, tmp_path: Path) -> None:
    ro = attach_argv(sandboxes.ssh_argv(sandbox.id, tmp_path / "ro"))
    rw = attach_argv(sandboxes.ssh_argv(sandbox.id, tmp_path / "rw"), read_write=True)
    assert ro[0] == "ssh" and "-t" in ro
    assert ro[-2].endswith("@127.0.0.1") and rw[-2].endswith("@127.0.0.1")
    assert shlex.split(ro[-1])[-1] == "-r" and "-r" not in shlex.split(rw[-1])
