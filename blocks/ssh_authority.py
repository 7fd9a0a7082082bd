"""Prefect block holding fluid's SSH certificate authority key as a secret."""

from pathlib import Path
from typing import ClassVar, Self

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from infra.settings import FluidSettings
from infra.transport.ssh_ca import CertificateAuthority


class SSHAuthority(Block):
    """fluid's SSH CA private key and the lifetime of the session certificates it signs."""

    _block_type_name: ClassVar[str] = "SSH Authority"
    _description: ClassVar[str] = (
        "fluid's SSH certificate authority: the Ed25519 CA private key (OpenSSH PEM, stored "
        "as a secret) and how long each sandbox session certificate lives (1-10 minutes). "
        "Create it from Python or the CLI: the UI's secret box drops a key's line breaks."
    )
    _logo_url: ClassVar[None] = None
    # A rejected key would otherwise be echoed, in clear, in the validation error.
    model_config = ConfigDict(hide_input_in_errors=True)

    ca_private_key: SecretStr = Field(
        description="The CA's Ed25519 private key in OpenSSH PEM format (unencrypted)."
    )
    cert_ttl_minutes: int = Field(
        default=5, ge=1, le=10, description="Lifetime of each session certificate in minutes."
    )

    @field_validator("ca_private_key")
    @classmethod
    def _must_be_ed25519(cls, value: SecretStr) -> SecretStr:
        # Fail when the block is built or loaded, not later inside a sandbox boot.
        CertificateAuthority.from_private_key(value.get_secret_value())
        return value

    @classmethod
    def from_key_file(cls, path: Path | str, cert_ttl_minutes: int = 5) -> Self:
        """Build the block from a CA key file, e.g. FluidSettings().ca_key_path."""
        return cls(
            ca_private_key=SecretStr(Path(path).read_text()), cert_ttl_minutes=cert_ttl_minutes
        )

    def apply(self, settings: FluidSettings | None = None) -> FluidSettings:
        """Return `settings` (default: FluidSettings()) using this CA key and certificate TTL."""
        base = settings if settings is not None else FluidSettings()
        return base.model_copy(
            update={
                "ca_private_key": self.ca_private_key,
                "cert_ttl_minutes": self.cert_ttl_minutes,
            }
        )
