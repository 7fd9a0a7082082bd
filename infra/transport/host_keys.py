"""A guest's SSH host key, pinned: OpenSSH public key lines, the name a host is known by, and
the paramiko policy that treats any key but the pinned one as a mismatch (HostKeyMismatch).

fluid learns a sandbox's host key at its first boot; from then on only that key is accepted.
"""

from __future__ import annotations

import base64
import binascii

import paramiko

from infra.errors import HostKeyMismatch


class RejectAsMismatch(paramiko.RejectPolicy):
    """Host keys are pinned, so a key that is not pinned (e.g. another type) is a mismatch."""

    def __init__(self, host: str, port: int, expected: paramiko.PKey) -> None:
        self._host = host
        self._port = port
        self._expected = expected

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyMismatch(
            mismatch_message(self._host, self._port, self._expected, key),
        )


def mismatch_message(host: str, port: int, expected: paramiko.PKey, got: paramiko.PKey) -> str:
    """What to do when the key at `host`:`port` is not the one pinned."""
    return (
        f"the SSH host key at {host}:{port} is {got.get_name()} {got.fingerprint}, not the "
        f"{expected.get_name()} {expected.fingerprint} fluid learned at the sandbox's first boot; "
        f"the sandbox on port {port} may have been replaced or another process now listens "
        "there. Re-create the sandbox (or re-learn its host key if the change is expected)."
    )


def parse_public_key(line: str) -> paramiko.PKey:
    """Parse an OpenSSH public key line ("ssh-ed25519 AAAA... [comment]")."""
    fields = line.split()
    if len(fields) < 2:
        raise ValueError(f"not an OpenSSH public key line: {line!r}")
    try:
        return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))
    except (binascii.Error, paramiko.SSHException, ValueError) as exc:
        raise ValueError(f"not an OpenSSH public key line: {line!r} ({exc})") from exc


def known_hosts_name(host: str, port: int) -> str:
    """The name a host's key is listed under in known_hosts (and in paramiko's host keys)."""
    # OpenSSH and paramiko both store port 22 under the bare host name.
    return host if port == 22 else f"[{host}]:{port}"
