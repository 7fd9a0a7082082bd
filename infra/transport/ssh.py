"""Run commands in, and copy files to and from, a guest over SSH (paramiko) with a session cert."""

from __future__ import annotations

import io
import logging
import math
import os
import selectors
import shlex
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import paramiko
from pydantic import BaseModel, ConfigDict

from infra.errors import (
    CommandTimeout,
    GuestDataRefused,
    HostKeyMismatch,
    NotARegularFile,
    SSHError,
)
from infra.transport.command_output import (
    CappedBuffer,
    CommandResult,
    OutputSink,
    StreamResult,
    short_command,
)
from infra.transport.host_keys import (
    RejectAsMismatch,
    known_hosts_name,
    mismatch_message,
    parse_public_key,
)
from infra.transport.ssh_ca import SessionCredentials

# Grace for coreutils `timeout` to escalate from TERM to KILL inside the guest.
KILL_AFTER_S = 5
# The guest enforces the timeout; the host deadline only catches a guest that stopped answering.
HOST_GRACE_S = 10.0
_CHUNK = 64 * 1024
# Upper bound on one wait, so a missed wake-up costs latency, never a hang.
_POLL_S = 0.5
_TIMEOUT_EXIT_STATUSES = (124, 137)
# Longest wait for one SFTP answer: a FIFO swapped in for a file blocks the guest's sftp-server.
SFTP_TIMEOUT_S = 30.0
# What read_bytes takes whole unless told otherwise (callers that show a part use read_head).
READ_LIMIT = 64 << 20
LIST_LIMIT = 10_000


class RemoteFile(BaseModel):
    """The start of a guest file: at most the limit asked for, and whether there is more."""

    data: bytes
    size: int | None = None  # as the guest's stat reports it (a sparse or /proc file lies)
    mode: int = 0o600
    more: bool = False


class DirListing(BaseModel):
    """A guest directory's entries (at most the limit asked for), sorted by name."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    entries: list[paramiko.SFTPAttributes]
    more: bool = False


class GuestConnection:
    """One authenticated SSH connection to a guest, pinned to the guest's known host key."""

    def __init__(
        self,
        host: str,
        port: int,
        credentials: SessionCredentials,
        host_key: str,
        *,
        user: str = "root",
        connect_timeout: float = 10.0,
        sftp_timeout: float = SFTP_TIMEOUT_S,
    ) -> None:
        # The transport thread logs tracebacks for every refused attempt while sshd starts up.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
        self.host = host
        self.port = port
        self.user = user
        self._connect_timeout = connect_timeout
        self._sftp_timeout = sftp_timeout
        self._credentials = credentials
        self._sftp: paramiko.SFTPClient | None = None
        expected = parse_public_key(host_key)
        self._client = paramiko.SSHClient()
        self._client.get_host_keys().add(
            known_hosts_name(host, port), expected.get_name(), expected
        )
        self._client.set_missing_host_key_policy(RejectAsMismatch(host, port, expected))
        try:
            self._client.connect(
                hostname=host,
                port=port,
                username=user,
                pkey=credentials.paramiko_key(),
                look_for_keys=False,
                allow_agent=False,
                timeout=connect_timeout,
                banner_timeout=connect_timeout,
                auth_timeout=connect_timeout,
                channel_timeout=connect_timeout,
            )
        except HostKeyMismatch:
            self._client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            self._client.close()
            raise HostKeyMismatch(mismatch_message(host, port, expected, exc.key)) from exc
        except paramiko.AuthenticationException as exc:
            self._client.close()
            raise SSHError(self._auth_failure_message(exc)) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._client.close()
            raise SSHError(
                f"cannot open SSH to {user}@{host}:{port}: {exc or type(exc).__name__}; check that "
                "the sandbox is running and its sshd is up (poll with infra.transport.ssh.ping)"
            ) from exc

    def _auth_failure_message(self, exc: Exception) -> str:
        creds = self._credentials
        now = datetime.now(UTC)
        if now >= creds.valid_before:
            why = f"the certificate expired at {creds.valid_before.isoformat()}"
        elif now < creds.valid_after:
            why = f"the certificate is not valid before {creds.valid_after.isoformat()}"
        else:
            why = (
                f"the guest does not accept principal {creds.principal!r} or does not trust "
                "this CA (check TrustedUserCAKeys and AuthorizedPrincipalsFile in the guest)"
            )
        return (
            f"{self.user}@{self.host}:{self.port} refused the session certificate ({exc}): {why}; "
            "issue a fresh certificate with CertificateAuthority.issue() for the right principal"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def is_active(self) -> bool:
        """Whether the SSH connection is still up (False once closed or lost)."""
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def transport(self) -> paramiko.Transport:
        """The live SSH transport, to open channels on; SSHError once the connection is closed."""
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(
                f"the SSH connection to {self.host}:{self.port} is closed; open a new "
                "GuestConnection (the sandbox may have been stopped)"
            )
        return transport

    def _open_session(self) -> paramiko.Channel:
        try:
            return self.transport().open_session(timeout=self._connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(
                f"cannot open an SSH session on {self.host}:{self.port}: {exc}; the sandbox may "
                "be overloaded or stopped, open a new GuestConnection"
            ) from exc

    @contextmanager
    def _running(self, command: str, timeout: float) -> Iterator[paramiko.Channel]:
        """A session channel on which `command` was started under the guest's timeout; an SSH
        failure while it runs becomes SSHError, and the channel is closed afterwards."""
        channel = self._open_session()
        try:
            channel.exec_command(_guarded(command, timeout))
            yield channel
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(
                f"SSH to {self.host}:{self.port} failed while running "
                f"{short_command(command)!r}: {exc}"
            ) from exc
        finally:
            channel.close()

    def _killed(self, command: str, timeout: float) -> str:
        return (
            f"command {short_command(command)!r} on {self.host}:{self.port} ran past its "
            f"{timeout:g} s timeout and was killed"
        )

    def run(
        self,
        command: str,
        *,
        timeout: float = 300.0,
        output_cap: int = 30_000,
        stdin: bytes | None = None,
        stop_at_cap: bool = False,
    ) -> CommandResult:
        """Run a shell command in the guest; raise CommandTimeout if it outlives timeout seconds.

        `stdin` is sent whole, then closed, before any output is read: the command must read it
        before it writes more than the channel's window (2 MiB). With `stop_at_cap`, output past
        the cap ends the command at once (the result's `stdout_cut` or `stderr_cut` says so)
        instead of being cut from the middle while the rest is read: for callers that refuse
        such output whole.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if output_cap < 0:
            raise ValueError(f"output_cap must not be negative, got {output_cap}")
        stdout = CappedBuffer(output_cap)
        stderr = CappedBuffer(output_cap)
        started_at = datetime.now(UTC)
        t0 = time.monotonic()
        deadline = t0 + timeout + HOST_GRACE_S
        deadline_hit = False
        exit_status = -1
        with self._running(command, timeout) as channel:
            if stdin is not None:
                channel.settimeout(max(1.0, deadline - time.monotonic()))
                channel.sendall(stdin)
                channel.shutdown_write()
                channel.settimeout(None)
            ended = self._pump(channel, stdout, stderr, deadline, stop_at_cap)
            deadline_hit = ended == "deadline"
            if ended == "eof":
                # exit-status follows EOF; a close without it (exit-signal) also sets the event.
                deadline_hit = not channel.status_event.wait(max(0.0, deadline - time.monotonic()))
            if not deadline_hit and channel.exit_status_ready():
                exit_status = channel.recv_exit_status()

        duration_s = time.monotonic() - t0
        timed_out = deadline_hit or (
            exit_status in _TIMEOUT_EXIT_STATUSES and duration_s >= max(1, math.ceil(timeout))
        )
        result = CommandResult.ended_now(
            command,
            exit_status,
            stdout.result(),
            stderr.result(),
            started_at=started_at,
            duration_s=duration_s,
            timed_out=timed_out,
        )
        if timed_out:
            raise CommandTimeout(
                f"{self._killed(command, timeout)}; pass a larger timeout= to run() if it "
                "legitimately needs longer (partial output is in .result)",
                result=result,
            )
        transport = self._client.get_transport()
        # -1 with a live transport means the command died from a signal (exit-signal).
        if exit_status == -1 and (transport is None or not transport.is_active()):
            raise SSHError(f"lost the SSH connection to {self.host}:{self.port} mid-command")
        return result

    def stream(
        self,
        command: str,
        take: Callable[[bytes], None],
        *,
        limit: int,
        timeout: float = 600.0,
    ) -> StreamResult:
        """Run a shell command in the guest and hand its stdout to `take` chunk by chunk as it
        arrives (the channel's window bounds what is in flight: memory stays flat), at most
        `limit` bytes: past that the command is ended at once and the result says `over`.
        CommandTimeout past `timeout` seconds (the guest kills the command; the host stops
        waiting a little later)."""
        if timeout <= 0 or limit < 0:
            raise ValueError(f"timeout must be positive and limit not negative: {timeout}, {limit}")
        sink = OutputSink(take, limit)
        stderr = CappedBuffer(16 << 10)
        t0 = time.monotonic()
        deadline = t0 + timeout + HOST_GRACE_S
        exit_status = -1
        with self._running(command, timeout) as channel:
            channel.shutdown_write()
            ended = self._pump(channel, sink, stderr, deadline, stop_at_cap=True)
            if ended == "eof" and channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                exit_status = channel.recv_exit_status()
            elif ended != "full":
                raise CommandTimeout(self._killed(command, timeout), result=None)
        return StreamResult(
            exit_status=exit_status,
            received=min(sink.total, limit),
            over=sink.over,
            stderr=stderr.result()[0],
            duration_s=time.monotonic() - t0,
        )

    @staticmethod
    def _pump(
        channel: paramiko.Channel,
        stdout: CappedBuffer | OutputSink,
        stderr: CappedBuffer,
        deadline: float,
        stop_at_cap: bool = False,
    ) -> str:
        """Drain both streams until "eof", the "deadline" or (with stop_at_cap) "full"."""
        with selectors.DefaultSelector() as selector:
            # The channel's fileno is readable while either stream has data or at EOF.
            selector.register(channel.fileno(), selectors.EVENT_READ)
            while True:
                # Take one chunk of each per round so a flood on one stream never starves the
                # other, and the deadline is checked even while data keeps coming.
                # Read EOF before the buffers: data that raced in ahead of it is then still seen.
                eof = channel.eof_received or channel.closed
                busy = False
                if channel.recv_ready():
                    stdout.add(channel.recv(_CHUNK))
                    busy = True
                if channel.recv_stderr_ready():
                    stderr.add(channel.recv_stderr(_CHUNK))
                    busy = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "deadline"
                if stop_at_cap and (stdout.over or stderr.over):
                    return "full"
                if busy:
                    continue
                if eof:
                    return "eof"
                selector.select(min(remaining, _POLL_S))

    def sftp_client(self) -> paramiko.SFTPClient:
        """The connection's SFTP session, started on first use (SSHError if the guest has none)."""
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, EOFError) as exc:
                raise SSHError(
                    f"cannot start SFTP on {self.host}:{self.port}: {exc}; check that the guest's "
                    "sshd has `Subsystem sftp` configured"
                ) from exc
            # Every answer has a deadline: the guest decides how long its sftp-server takes.
            self._sftp.get_channel().settimeout(self._sftp_timeout)
        return self._sftp

    def _drop_sftp(self) -> None:
        """Close the SFTP session (one left with answers outstanding is not used again)."""
        if self._sftp is not None:
            sftp, self._sftp = self._sftp, None
            with suppress(Exception):  # thrown away, broken or not
                sftp.close()

    @contextmanager
    def _sftp_doing(self, action: str, remote_path: str) -> Iterator[paramiko.SFTPClient]:
        """The SFTP session, with a protocol failure or a silent guest turned into SSHError."""
        sftp = self.sftp_client()
        try:
            yield sftp
        except TimeoutError as exc:
            self._drop_sftp()
            raise SSHError(
                f"SFTP {action} of {self.host}:{remote_path} got no answer within "
                f"{self._sftp_timeout:g} s (a FIFO or a device that blocks, or a stuck guest); "
                "that SFTP session was closed"
            ) from exc
        except paramiko.SSHException as exc:
            self._drop_sftp()
            raise SSHError(f"SFTP {action} of {self.host}:{remote_path} failed: {exc}") from exc

    def _put(self, source: IO[bytes], remote_path: str, mode: int | None) -> None:
        with (
            self._sftp_doing("upload", remote_path) as sftp,
            sftp.open(remote_path, "wb") as remote,
        ):
            # Restrict the mode before any content lands, in case the file holds secrets.
            if mode is not None:
                remote.chmod(mode)
            remote.set_pipelined(True)
            shutil.copyfileobj(source, remote, _CHUNK)

    def upload_bytes(self, data: bytes, remote_path: str, mode: int | None = None) -> None:
        """Write data to remote_path over SFTP with mode (if given) set before the content."""
        self._put(io.BytesIO(data), remote_path, mode)

    def upload(self, local: Path, remote_path: str, mode: int | None = None) -> None:
        """Copy a local file to remote_path; mode defaults to the local file's permission bits."""
        local = Path(local)
        with local.open("rb") as source:
            if mode is None:
                mode = stat.S_IMODE(os.fstat(source.fileno()).st_mode)
            self._put(source, remote_path, mode)

    def download(self, remote_path: str, local: Path, limit: int = READ_LIMIT) -> None:
        """Copy a regular file of at most `limit` bytes to a local file, keeping the remote
        permission bits (rwx only); a larger one is refused (GuestDataRefused)."""
        got = self.read_head(remote_path, limit)
        if got.more:
            raise GuestDataRefused(f"{self.host}:{remote_path} holds more than {limit} bytes")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as target:
            target.write(got.data)
            os.fchmod(fd, got.mode & 0o777)

    def read_head(self, remote_path: str, limit: int) -> RemoteFile:
        """At most `limit` bytes from the start of a regular file, read in chunks, and whether
        it has more; anything else (a device, a FIFO) is refused with NotARegularFile before
        a byte is read. The guest's stat may lie (sparse, /proc): only what arrives counts."""
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        want = limit + 1  # one byte more says whether there is more
        with self._sftp_doing("read", remote_path) as sftp:
            # Refused before opening: opening a FIFO blocks the guest's sftp-server.
            self._regular(remote_path, sftp.stat(remote_path))
            with sftp.open(remote_path, "rb") as remote:
                st = remote.stat()  # of what was opened: a swap after the stat is caught here
                self._regular(remote_path, st)
                if st.st_size:
                    remote.prefetch(min(st.st_size, want))
                buf = bytearray()
                while len(buf) < want:
                    chunk = remote.read(min(_CHUNK, want - len(buf)))
                    if not chunk:
                        break
                    buf += chunk
        return RemoteFile(
            data=bytes(buf[:limit]),
            size=st.st_size,
            mode=stat.S_IMODE(st.st_mode or 0o600),
            more=len(buf) > limit,
        )

    def _regular(self, remote_path: str, attrs: paramiko.SFTPAttributes) -> None:
        mode = attrs.st_mode or 0
        if not stat.S_ISREG(mode):
            raise NotARegularFile(
                f"{self.host}:{remote_path} is {_file_type(mode)}, not a regular file; "
                "it is not read (a device or FIFO has no end)"
            )

    def read_bytes(self, remote_path: str, limit: int = READ_LIMIT) -> bytes:
        """The whole content of a regular file of at most `limit` bytes (else GuestDataRefused;
        read_head reads the start of a larger one)."""
        got = self.read_head(remote_path, limit)
        if got.more:
            raise GuestDataRefused(f"{self.host}:{remote_path} holds more than {limit} bytes")
        return got.data

    def list_dir(self, remote_path: str, limit: int = LIST_LIMIT) -> DirListing:
        """At most `limit` entries of a remote directory (name, mode, size, mtime), sorted by
        name; the listing stops there (`more`), so a huge directory costs no more."""
        entries: list[paramiko.SFTPAttributes] = []
        more = False
        with self._sftp_doing("listing", remote_path) as sftp:
            # The server sends ~100 entries per answer: ask ahead only for what the limit needs.
            listing = sftp.listdir_iter(remote_path, read_aheads=min(50, limit // 100 + 2))
            for attrs in listing:
                if len(entries) == limit:
                    more = True
                    break
                entries.append(attrs)
        if more:
            listing.close()
            self._drop_sftp()  # answers asked ahead are still on their way, the handle open
        return DirListing(entries=sorted(entries, key=lambda a: a.filename), more=more)

    def close(self) -> None:
        """Close SFTP and the SSH connection; safe to call twice."""
        self._drop_sftp()
        self._client.close()


def _guarded(command: str, timeout: float) -> str:
    """`command` as the guest runs it: under coreutils timeout, which kills the whole process
    group (the command dies in the guest even when it forks), in the login shell (${SHELL}
    expanded as ssh would run the command)."""
    return (
        f"timeout --kill-after={KILL_AFTER_S} {max(1, math.ceil(timeout))} "
        f'"${{SHELL:-/bin/sh}}" -c {shlex.quote(command)}'
    )


_FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symlink",
}


def _file_type(mode: int) -> str:
    return _FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")


def ping(
    host: str,
    port: int,
    credentials: SessionCredentials,
    host_key: str,
    timeout: float = 5.0,
) -> bool:
    """Return True if the guest accepts SSH and runs `true`; False on any failure."""
    try:
        with GuestConnection(host, port, credentials, host_key, connect_timeout=timeout) as conn:
            return conn.run("true", timeout=timeout).exit_status == 0
    except Exception:
        return False


def banner(host: str, port: int, timeout: float = 10.0) -> bool:
    """True once an SSH server greets on `host`:`port` (no handshake, no credentials)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                sock.settimeout(max(0.5, deadline - time.monotonic()))
                if sock.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def openssh_command(
    host: str,
    port: int,
    key_path: Path,
    host_key: str,
    known_hosts_path: Path,
    user: str = "root",
) -> list[str]:
    """Write a one-entry known_hosts file and return argv for OpenSSH `ssh` to reach the guest."""
    key = parse_public_key(host_key)
    known_hosts_path = Path(known_hosts_path)
    known_hosts_path.parent.mkdir(parents=True, exist_ok=True)
    known_hosts_path.write_text(
        f"{known_hosts_name(host, port)} {key.get_name()} {key.get_base64()}\n"
    )
    return [
        "ssh",
        "-i",
        str(key_path),
        "-o",
        _ssh_option("CertificateFile", f"{key_path}-cert.pub"),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        _ssh_option("UserKnownHostsFile", str(known_hosts_path)),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-p",
        str(port),
        f"{user}@{host}",
    ]


def _ssh_option(name: str, value: str) -> str:
    # ssh splits -o values on whitespace like config lines; double quotes keep a path whole.
    if any(c.isspace() for c in value):
        return f'{name}="{value}"'
    return f"{name}={value}"
