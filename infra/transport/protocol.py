"""What a transport to a guest offers, whatever carries it: run a shell command and get one
CommandResult back, and, where the transport can, upload and read a file (the shape of
pytest-testinfra's backends).

A caller that only runs commands (or moves files) asks for a `Transport` (or a
`FileTransport`) rather than a concrete class. The transports:
- ssh.GuestConnection: commands and files over SSH and SFTP; a FileTransport.
- guest_shell.GuestShell: commands typed into the agent's persistent tmux shell (cwd and
  environment persist between them).
- guest_agent.GuestAgent: commands through QEMU's guest agent, before SSH is up.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from infra.transport.command_output import CommandResult


@runtime_checkable
class Transport(Protocol):
    """Runs shell commands, as root, in one guest."""

    def run(self, command: str, *, timeout: float, output_cap: int = ...) -> CommandResult:
        """Run `command` in the guest's shell and wait for it to end: its exit status and
        output, each stream cut from the middle beyond `output_cap` bytes.

        Past `timeout` seconds: CommandTimeout holding the partial result where the transport
        can stop the command (SSH, the guest shell); the guest agent cannot, and raises
        GuestAgentError. Every transport may add keyword arguments of its own, with defaults.
        """
        ...


@runtime_checkable
class FileTransport(Transport, Protocol):
    """A Transport that also writes and reads whole files in the guest."""

    def upload_bytes(self, data: bytes, remote_path: str, mode: int | None = None) -> None:
        """Write `data` to `remote_path`, with `mode` (if given) set before any content lands."""
        ...

    def read_bytes(self, remote_path: str, limit: int = ...) -> bytes:
        """The whole content of a regular file of at most `limit` bytes; GuestDataRefused for a
        larger one, NotARegularFile for a device or FIFO, FileNotFoundError if there is none."""
        ...
