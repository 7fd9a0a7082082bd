"""Prefect block describing the production hosts an approved playbook is applied to."""

import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from blocks.docs import docs_url
from infra.ansible.playbook_runs import AnsibleHost, AnsibleJump
from infra.errors import ProductionNotRunning
from infra.settings import FluidSettings, get_settings
from infra.transport import ssh, ssh_ca
from infra.transport.ssh_ca import MAX_TTL

if TYPE_CHECKING:
    from infra.machines.production import ProductionVM


# A name or an IP (v6 too), never an option: an address is put on ssh's command line.
ADDRESS = r"^[A-Za-z0-9_:\[][A-Za-z0-9_.:\[\]-]*$"


class SSHEndpoint(BaseModel):
    """Where an sshd listens and the host key it must show."""

    address: str = Field(
        default="127.0.0.1",
        pattern=ADDRESS,
        description="Host name or IP.",
    )
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    host_key: str | None = Field(
        default=None,
        description=(
            'The host\'s SSH public key ("ssh-ed25519 AAAA..."); host keys are checked '
            "strictly against it. Empty: the host must already be in the controller's "
            "~/.ssh/known_hosts (checking is strict either way)."
        ),
    )

    @field_validator("host_key")
    @classmethod
    def _parse_host_key(cls, value: str | None) -> str | None:
        # Fail when the block is built or loaded, not when ssh refuses the host mid-apply.
        if value is None or not value.strip():
            return None
        key = ssh.parse_public_key(value.strip())
        return f"{key.get_name()} {key.get_base64()}"

    def known_hosts_line(self) -> str | None:
        """This host's line for an OpenSSH known_hosts file, or None without a host key."""
        if self.host_key is None:
            return None
        return f"{ssh.known_hosts_name(self.address, self.port)} {self.host_key}\n"


class ProductionHost(SSHEndpoint):
    """One production host: its inventory name, where its sshd listens and its host key.

    Behind a jump host, `address` and `port` are as the jump host sees them."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$",
        description="Inventory name of the host, e.g. web-1 or web1.example.com.",
    )


class JumpHost(SSHEndpoint):
    """A bastion fluid logs in to first (ssh -J): the production hosts are reached through it,
    with the same key or certificate."""

    address: str = Field(pattern=ADDRESS, description="Host name or IP.")
    user: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$",
        description="SSH login user on the jump host (default: the target's user).",
    )


class ProductionTarget(Block):
    """The hosts a change is applied to, and how fluid logs in to them over SSH.

    Authentication is a short-lived certificate signed by fluid's CA for
    `certificate_principal` when that is set (the private key, if any, is then unused), else
    `private_key`.
    """

    _block_type_name: ClassVar[str] = "fluid Production Target"
    _description: ClassVar[str] = (
        "Production hosts an approved fluid playbook is applied to: addresses, SSH ports and "
        "host keys, the login user and sudo, and either an SSH private key (a secret) or a "
        "principal fluid signs short-lived certificates for with its CA. Create it from "
        "Python or the CLI: the UI's secret box drops a key's line breaks."
    )
    _logo_url: ClassVar[None] = None
    _documentation_url: ClassVar[str] = docs_url("prefect-blocks-profile-approval-notifications")
    # A rejected private key would otherwise be echoed, in clear, in the validation error.
    model_config = ConfigDict(hide_input_in_errors=True)

    hosts: list[ProductionHost] = Field(min_length=1, description="The hosts (at least one).")
    user: str = Field(default="root", min_length=1, description="SSH login user.")
    become: bool = Field(default=False, description="Run tasks through sudo (ansible_become).")
    become_user: str = Field(default="root", description="The user sudo runs tasks as.")
    private_key: SecretStr | None = Field(
        default=None, description="OpenSSH private key (unencrypted) for the login user."
    )
    certificate_principal: str | None = Field(
        default=None,
        pattern=r"^[^\s,]+$",
        description=(
            "When set, fluid signs a short-lived SSH certificate for this principal with its "
            "CA for each run, instead of using the private key."
        ),
    )
    jump_host: JumpHost | None = Field(
        default=None,
        description="A bastion the hosts are reached through (ssh -J), with the same login.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Labels a fluid host must carry to reach these hosts, e.g. {"net": "dmz"}: '
            "runs applying here are placed only on such hosts (`fluid host add --label`)."
        ),
    )

    @field_validator("private_key")
    @classmethod
    def _looks_like_a_private_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value().strip()
        if not (text.startswith("-----BEGIN ") and "PRIVATE KEY-----" in text):
            raise ValueError(
                "private_key must be an OpenSSH private key (-----BEGIN OPENSSH PRIVATE "
                "KEY----- ... with its line breaks); pass the file's contents, not its path"
            )
        return value

    @model_validator(mode="after")
    def _can_log_in(self) -> Self:
        if self.private_key is None and not self.certificate_principal:
            raise ValueError(
                "a ProductionTarget needs private_key or certificate_principal (or both) to "
                "log in to its hosts"
            )
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be unique in one target, got {names}")
        return self

    def ansible_hosts(
        self, workdir: Path, settings: FluidSettings | None = None
    ) -> list[AnsibleHost]:
        """Write the key (and certificate) and known_hosts (all 0600) into `workdir`; the
        inventory entries for run_playbook.

        A certificate is valid 10 minutes from this call: call it right before the run. Behind
        a jump host it may open tunnels (ssh -W through the jump), which no other fluid
        certificate may.
        """
        d = Path(workdir) / "production-target"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = d / "id"
        cert: Path | None = None
        if self.certificate_principal:
            creds = ssh_ca.authority(settings or get_settings()).issue(
                self.certificate_principal, MAX_TTL, port_forwarding=self.jump_host is not None
            )
            _write_0600(key, creds.private_key_openssh)
            cert = d / "id-cert.pub"
            _write_0600(cert, creds.certificate + "\n")
        else:
            assert self.private_key is not None  # the model validator guarantees one of them
            # OpenSSH rejects a key file without its final newline ("invalid format").
            text = self.private_key.get_secret_value().replace("\r\n", "\n").strip() + "\n"
            _write_0600(key, text)
        lines = [line for h in self.hosts if (line := h.known_hosts_line())]
        known = d / "known_hosts"
        if lines:
            _write_0600(known, "".join(lines))
        jump = None
        if self.jump_host is not None:
            jump_known = d / "jump_known_hosts"
            if line := self.jump_host.known_hosts_line():
                _write_0600(jump_known, line)
            jump = AnsibleJump(
                address=self.jump_host.address,
                port=self.jump_host.port,
                user=self.jump_host.user or self.user,
                known_hosts_path=jump_known if line else None,
            )
        return [
            AnsibleHost(
                name=h.name,
                address=h.address,
                port=h.port,
                user=self.user,
                key_path=key,
                cert_path=cert,
                known_hosts_path=known if h.host_key else None,
                become=self.become,
                become_user=self.become_user,
                jump=jump,
            )
            for h in self.hosts
        ]

    @classmethod
    def for_vm(cls, vm: "ProductionVM") -> Self:
        """The target for one of fluid's production VMs: root by certificate, host key pinned."""
        if not vm.host_key:
            raise ProductionNotRunning(
                f"production VM {vm.name} never finished booting, so its host key is unknown; "
                f"`fluid production destroy {vm.name}` and create it again"
            )
        return cls(
            hosts=[
                ProductionHost(
                    name=vm.name, address=vm.address, port=vm.ssh_port, host_key=vm.host_key
                )
            ],
            user="root",
            certificate_principal=vm.principal,
        )


def _write_0600(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        # O_CREAT's mode is ignored for an existing file, which may be looser.
        os.fchmod(fd, 0o600)
        f.write(text)
