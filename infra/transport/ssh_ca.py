"""fluid's SSH certificate authority: short-lived Ed25519 user certificates for sandbox sessions."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import stat
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import BaseModel, ConfigDict

from infra.errors import CAKeyPermissions, InvalidCertificateTTL
from infra.host.permissions import private_dir
from infra.settings import FluidSettings, get_settings

MIN_TTL = timedelta(minutes=1)
MAX_TTL = timedelta(minutes=10)
DEFAULT_TTL = timedelta(minutes=5)
# Guests may run slightly behind the host; backdating avoids "certificate not yet valid".
CLOCK_SKEW = timedelta(seconds=30)
CA_COMMENT = "fluid-ca"


class SessionCredentials(BaseModel):
    """A fresh Ed25519 key pair plus the CA-signed user certificate for it."""

    model_config = ConfigDict(frozen=True)

    private_key_openssh: str
    certificate: str
    principal: str
    valid_after: datetime
    valid_before: datetime

    def paramiko_key(self) -> paramiko.PKey:
        """Return the private key as a paramiko key that authenticates with the certificate."""
        key = paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_key_openssh))
        key.load_certificate(self.certificate)
        return key

    def write_files(self, directory: Path) -> Path:
        """Write `id` and `id-cert.pub` (0600) into directory (0700) and return the key path."""
        private_dir(directory)
        key_path = directory / "id"
        _write_private(key_path, self.private_key_openssh.encode())
        _write_private(directory / "id-cert.pub", (self.certificate + "\n").encode())
        return key_path


class CertificateAuthority:
    """An Ed25519 CA key that signs short-lived user certificates."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def load_or_create(cls, path: Path) -> CertificateAuthority:
        """Load the CA key at path, creating it (0600, parent dir 0700) if it does not exist.

        An existing key directory open to others (an older install) is closed first.
        """
        path = Path(path)
        private_dir(path.parent)
        if not path.exists():
            pem = _private_openssh(ed25519.Ed25519PrivateKey.generate())
            _create_exclusive(path, pem)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CAKeyPermissions(
                f"SSH CA key {path} has mode {mode:04o} and is accessible by group or others; "
                f"anyone who can read it can log in to every sandbox. Run `chmod 600 {path}` "
                "(and consider rotating the key)."
            )
        return cls.from_private_key(path.read_text())

    @classmethod
    def from_private_key(cls, openssh_pem: str) -> CertificateAuthority:
        """Build a CA from an OpenSSH-format Ed25519 private key (e.g. a stored secret)."""
        try:
            key = serialization.load_ssh_private_key(openssh_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"the SSH CA key is not an unencrypted OpenSSH private key: {exc}"
            ) from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(
                f"the SSH CA key must be Ed25519, got {type(key).__name__}; "
                "generate one with `ssh-keygen -t ed25519`"
            )
        return cls(key)

    def private_key_openssh(self) -> str:
        """The CA's private key in OpenSSH format, to share it with the cluster's other hosts."""
        return _private_openssh(self._key).decode()

    @classmethod
    def install(cls, path: Path, openssh_pem: str) -> CertificateAuthority:
        """Keep `openssh_pem` (validated) as the CA key file at `path` unless one is there; the
        CA the file then holds (a concurrent installer's, if it won)."""
        cls.from_private_key(openssh_pem)
        private_dir(Path(path).parent)
        _create_exclusive(Path(path), openssh_pem.encode())
        return cls.load_or_create(path)

    def public_key_line(self) -> str:
        """Return the CA public key as an OpenSSH line, for sshd's TrustedUserCAKeys."""
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return f"{raw.decode()} {CA_COMMENT}"

    def issue(
        self,
        principal: str,
        ttl: timedelta = DEFAULT_TTL,
        *,
        key_id: str | None = None,
        now: datetime | None = None,
        valid_since: datetime | None = None,
        port_forwarding: bool = False,
    ) -> SessionCredentials:
        """Issue a fresh key pair and a user certificate for principal, valid for ttl.

        `now` (naive values are taken as UTC) lets callers issue certificates for another moment,
        e.g. an already expired one in tests. `valid_since` backdates the start of validity, for
        a guest whose clock is behind: one just reverted to an older checkpoint.
        `port_forwarding` lets the certificate open a tunnel: for a jump host, never a sandbox.
        """
        if not isinstance(ttl, timedelta) or not MIN_TTL <= ttl <= MAX_TTL:
            raise InvalidCertificateTTL(
                f"certificate TTL {ttl!s} is not allowed: it must be between 1 and 10 minutes "
                "(inclusive); issue a new certificate for longer work instead"
            )
        if not principal or any(c.isspace() or c == "," for c in principal):
            raise ValueError(
                f"invalid principal {principal!r}: it must be non-empty, without spaces or commas"
            )
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        # Certificates carry whole seconds; keep the model's timestamps equal to the signed ones.
        start = now
        if valid_since is not None:
            since = valid_since if valid_since.tzinfo else valid_since.replace(tzinfo=UTC)
            start = min(now, since)
        valid_after = int((start - CLOCK_SKEW).timestamp())
        valid_before = int((now + ttl).timestamp())
        serial = secrets.randbits(64)
        if key_id is None:
            key_id = f"fluid:{principal}:{serial:016x}"

        session_key = ed25519.Ed25519PrivateKey.generate()
        builder = serialization.SSHCertificateBuilder()
        if port_forwarding:
            builder = builder.add_extension(b"permit-port-forwarding", b"")
        cert = (
            builder.public_key(session_key.public_key())
            .serial(serial)
            .type(serialization.SSHCertificateType.USER)
            .key_id(key_id.encode())
            .valid_principals([principal.encode()])
            .valid_after(valid_after)
            .valid_before(valid_before)
            # Else only a pty: no agent/port/X11 forwarding and no ~/.ssh/rc for sandbox sessions.
            .add_extension(b"permit-pty", b"")
            .sign(self._key)
        )
        return SessionCredentials(
            private_key_openssh=_private_openssh(session_key).decode(),
            certificate=f"{cert.public_bytes().decode()} {key_id}",
            principal=principal,
            valid_after=datetime.fromtimestamp(valid_after, UTC),
            valid_before=datetime.fromtimestamp(valid_before, UTC),
        )


def _private_openssh(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        # O_CREAT's mode is ignored for an existing file, which may be looser.
        os.fchmod(fd, 0o600)
        f.write(data)


def _create_exclusive(path: Path, data: bytes) -> None:
    """Write data to path (0600) only if path does not exist; a concurrent creator wins."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if path exists, so readers never see a half-written key.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def authority(settings: FluidSettings | None = None) -> CertificateAuthority:
    """fluid's SSH CA: the configured key (e.g. from a Prefect secret) or a 0600 key file."""
    settings = settings or get_settings()
    if settings.ca_private_key is not None:
        return CertificateAuthority.from_private_key(settings.ca_private_key.get_secret_value())
    return CertificateAuthority.load_or_create(settings.ca_key_path)
