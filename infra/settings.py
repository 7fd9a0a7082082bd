"""fluid's settings: embedded defaults, overridden by FLUID_* environment variables."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pydantic_settings
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.errors import SettingsError

ENV_PREFIX = "FLUID_"


def _default_home() -> Path:
    return Path(os.path.expanduser("~")) / ".fluid"


class FluidSettings(BaseSettings):
    """Where fluid keeps its state and how it talks to libvirt; every field is FLUID_<NAME>."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Database, CA key, config.")
    host_id: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="This hypervisor host's id among fluid's hosts; else a stable one kept in "
        "FLUID_HOME/host-id (not the hostname, which containers share).",
    )
    # Disks must live where QEMU's unprivileged user can traverse; a home directory is not.
    storage_dir: Path = Field(default=Path("/var/lib/fluid"), description="Images, disks, logs.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite by default.")
    libvirt_uri: str = "qemu:///system"
    domain_type: Literal["auto", "kvm", "qemu"] = "auto"
    memory_mib: int = Field(default=512, ge=256)
    vcpus: int = Field(default=1, ge=1)
    tb_cache_mib: int = Field(default=128, ge=32, description="TCG translation cache per VM.")
    network: Literal["nat", "isolated"] = "nat"
    egress_allow: str = Field(
        default="",
        description="CIDRs (comma-separated) a nat sandbox may reach although they are private "
        "or link-local, e.g. an internal package mirror; see infra/host/firewall.py.",
    )
    image: str = "debian-12"
    warm_slots: int = Field(
        default=4,
        ge=0,
        description="Saved booted VMs sandboxes are restored from (warm start); 0 = cold boots.",
    )
    spare_sandboxes: int = Field(
        default=1,
        ge=0,
        description="Warm sandboxes kept running for the next unnamed create to take at once, "
        "refilled in the background; each holds a warm slot and its memory while it waits.",
    )
    max_sandboxes: int = Field(
        default=8,
        ge=2,
        description="Sandboxes at once on this host: Prefect concurrency limit for flow runs.",
    )
    ca_private_key: SecretStr | None = Field(
        default=None, description="fluid's CA key (OpenSSH PEM); else a 0600 file under home."
    )
    cert_ttl_minutes: int = Field(default=5, ge=1, le=10)
    sandbox_ttl_minutes: int = Field(default=120, ge=1)
    ready_timeout_s: float = Field(default=180.0, gt=0)
    # Everything a capture brings back is written by the guest: each is a cap, and a capture
    # past one is refused whole (never cut), so a hostile guest cannot exhaust the host.
    capture_max_bytes: int = Field(
        default=256 << 20, ge=1 << 20, description="Largest output one capture may send."
    )
    capture_max_entries: int = Field(
        default=1_000_000, ge=1000, description="Most entries (files, lines) one capture may list."
    )
    capture_max_content: int = Field(
        default=4 << 20,
        ge=0,
        description="Largest file whose content travels inline in the capture's output (bytes); "
        "a larger one is streamed into the blob store after it.",
    )
    capture_max_file: int = Field(
        default=1 << 30,
        ge=0,
        description="Largest file whose content a capture keeps (bytes); a larger file's change "
        "is not exported and says so.",
    )
    capture_max_total: int = Field(
        default=4 << 30,
        ge=0,
        description="Most content one capture streams from the guest (bytes); past it the "
        "capture is refused whole.",
    )
    hash_index_max_entries: int = Field(
        default=500_000, ge=0, description="Most entries the per-image hash index keeps."
    )
    ansible_strategy: Literal["linear", "mitogen"] = Field(
        default="linear",
        description="linear is Ansible's own strategy, one Python per task; mitogen (the "
        "optional `mitogen` extra) keeps one Python per host for a whole run, faster on slow "
        "guests, and supports only the ansible-core versions Mitogen does.",
    )
    port_range: tuple[int, int] = (22200, 22999)
    production_address: str = Field(
        default="127.0.0.1",
        description="The address of this host that production VMs' SSH forwards listen on and "
        "are recorded under, so other fluid hosts can apply to them. Sandboxes always listen "
        "on 127.0.0.1 only.",
    )
    mirror: str = "http://deb.debian.org/debian"
    suite: str = "bookworm"
    prefect_port: int = Field(
        default=4200, description="Port of the local Prefect server fluid starts on 127.0.0.1."
    )
    work_pool: str = Field(default="fluid", description="The process work pool fluid deploys to.")
    approval_notify: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9-]+/[^/]+$",
        description="A notification block (TYPE-SLUG/NAME, e.g. custom-webhook/approvals) "
        "`fluid server start` points an automation at: it notifies when an agent-task run "
        "waits for approval.",
    )

    def __init__(self, **values: Any) -> None:
        # pydantic names the field (`memory_mib`); a user set FLUID_MEMORY_MIB, so every
        # caller gets an error that names the variable and the value it holds.
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise SettingsError(_invalid_values(e, values)) from e
        except pydantic_settings.SettingsError as e:
            raise SettingsError(_unparsable_value(e)) from e

    @field_validator("production_address")
    @classmethod
    def _an_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError as e:
            raise ValueError("not an IP address") from e

    @field_validator("egress_allow")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        nets = []
        for word in value.replace(",", " ").split():
            try:
                nets.append(str(ipaddress.ip_network(word, strict=False)))
            except ValueError as e:
                raise ValueError(f"{word!r} is not a CIDR") from e
        return ",".join(nets)

    def egress_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """FLUID_EGRESS_ALLOW as networks."""
        return [ipaddress.ip_network(w) for w in self.egress_allow.split(",") if w]

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'fluid.db'}"

    @property
    def store_id(self) -> str:
        """A short, stable name for this database, recorded in each VM's metadata."""
        import hashlib

        return hashlib.sha256(self.db_url.encode()).hexdigest()[:12]

    @property
    def ca_key_path(self) -> Path:
        return self.home / "ca" / "fluid_ca"

    @property
    def images_dir(self) -> Path:
        return self.storage_dir / "images"

    @property
    def disks_dir(self) -> Path:
        return self.storage_dir / "disks"

    @property
    def logs_dir(self) -> Path:
        return self.storage_dir / "logs"

    @property
    def cache_dir(self) -> Path:
        return self.storage_dir / "cache"

    @property
    def captures_dir(self) -> Path:
        """Guest-state captures, one folder per sandbox (and the hash indexes)."""
        return self.home / "captures"

    @property
    def prefect_dir(self) -> Path:
        """The local Prefect server's home: its database, results, logs and auth string."""
        return self.home / "prefect"

    @property
    def runs_dir(self) -> Path:
        """Playbooks and reports of agent-task runs, one folder per flow run."""
        return self.home / "runs"


def env_name(field: str) -> str:
    """The environment variable that sets `field`: FLUID_<FIELD>."""
    return ENV_PREFIX + field.upper()


def _where(field: str, values: dict[str, Any], value: Any) -> str:
    """`FLUID_X='value'` (or `x='value'` when the caller passed it); secrets not shown."""
    name = field if field in values else env_name(field)
    secret = FluidSettings.model_fields[field].annotation in (SecretStr, SecretStr | None)
    return f"{name}=<hidden>" if secret else f"{name}={value!r}"


def _invalid_values(e: ValidationError, values: dict[str, Any]) -> str:
    """One line naming each refused variable, its value and what it must be."""
    parts = []
    for err in e.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "value_error":
            why = str(err["ctx"]["error"])
        else:
            why = re.sub(r"^\w+ should", "must", err["msg"])
        if field in FluidSettings.model_fields:
            parts.append(f"{_where(field, values, err['input'])}: {why}")
        else:
            parts.append(why)
    return "; ".join(parts)


def _unparsable_value(e: pydantic_settings.SettingsError) -> str:
    """pydantic-settings refuses a value it cannot decode (JSON for a tuple) before validation;
    its message names only the field."""
    found = re.search(r'field "(\w+)"', str(e))
    if not found or found.group(1) not in FluidSettings.model_fields:
        return str(e)
    field = found.group(1)
    value = os.environ.get(env_name(field))
    default = FluidSettings.model_fields[field].default
    example = f" (e.g. {env_name(field)}='{json.dumps(default)}')" if default is not None else ""
    shown = _where(field, {}, value) if value is not None else env_name(field)
    return f"{shown}: not a JSON value{example}"


def environment(settings: FluidSettings) -> dict[str, str]:
    """This process's environment with FLUID_* replaced so FluidSettings() reads back `settings`
    (a setting left at None must not be read from the parent's variables)."""
    env = dict(os.environ)
    for name in FluidSettings.model_fields:
        env.pop(env_name(name), None)
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[env_name(name)] = json.dumps(value) if isinstance(value, tuple) else str(value)
    return env


@lru_cache
def get_settings() -> FluidSettings:
    """The process-wide settings, read once from the environment."""
    return FluidSettings()
