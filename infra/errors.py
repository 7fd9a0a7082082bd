"""Exception types fluid raises; each message says what to do next."""

from __future__ import annotations


class FluidError(Exception):
    """Base of every error fluid raises on purpose."""


class SettingsError(FluidError, ValueError):
    """A FLUID_* environment variable (or a setting passed in code) has a value fluid cannot
    use; the message names the variable and its value."""


class InvalidName(FluidError, ValueError):
    """A sandbox, checkpoint or image name does not match the allowed pattern."""


class ImageNotFound(FluidError):
    """No golden image (or image version) by that name."""


class ImageBuildError(FluidError):
    """Building or importing a golden image failed."""


class ImageInUse(FluidError):
    """An image version cannot be deleted while disks still rest on it."""


class ImageCorrupt(FluidError):
    """A copy of an image part does not match the digest the cluster's catalog (or its
    manifest) records; the copy is refused and never used."""

    def __init__(self, message: str, *, part: str, expected: str, actual: str | None) -> None:
        super().__init__(message)
        self.part = part
        self.expected = expected
        self.actual = actual


class LibvirtUnavailable(FluidError):
    """libvirtd cannot be reached."""


class NoFreePort(FluidError):
    """No free 127.0.0.1 port in the configured range."""


class SandboxNotFound(FluidError):
    """No sandbox with that id."""


class SandboxExists(FluidError):
    """A sandbox with that id already exists."""


class SandboxNotReady(FluidError):
    """A sandbox did not answer over SSH before its deadline."""


class SandboxNotRunning(FluidError):
    """The operation needs a running sandbox."""


class CheckpointNotFound(FluidError):
    """No checkpoint by that name on that sandbox."""


class CheckpointExists(FluidError):
    """A checkpoint by that name already exists on that sandbox."""


class InvalidCertificateTTL(FluidError, ValueError):
    """A certificate lifetime outside the allowed 1–10 minutes."""


class SSHError(FluidError):
    """SSH to a guest failed (connection, authentication or protocol)."""


class HostKeyMismatch(SSHError):
    """The guest presented a host key other than the one fluid learned at its first boot."""


class GuestDataRefused(FluidError):
    """What a guest sent is malformed, forged or too large; none of it was kept."""


class NotARegularFile(FluidError):
    """A guest path is a device, FIFO, socket or directory where a regular file was needed."""


class CommandTimeout(FluidError):
    """A guest command ran past its timeout and was killed; `result` holds its partial output."""

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result


class GuestShellError(FluidError):
    """The agent's shell in the guest could not start or ended mid-command; `result` holds
    the command's partial output when there is one."""

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result


class CAKeyPermissions(FluidError):
    """The SSH CA private key file is accessible by group or others."""


class ProductionNotFound(FluidError):
    """No production VM by that name."""


class ProductionExists(FluidError):
    """A production VM by that name already exists."""


class ProductionNotReady(FluidError):
    """A production VM did not answer over SSH before its deadline."""


class ProductionNotRunning(FluidError):
    """The operation needs a running production VM."""


class ProductionBlockError(FluidError):
    """Saving a production VM's ProductionTarget Prefect block failed (the VM itself is fine)."""


class DiskError(FluidError):
    """Copying or preparing a VM's disk (or its kernel, initrd or seed) failed."""


class GuestAgentError(FluidError):
    """A VM's QEMU guest agent did not answer, or a command through it failed."""


class WarmStartFailed(FluidError):
    """A sandbox could not be restored from a warm slot (fluid then boots it cold)."""


class HostNotFound(FluidError):
    """No host with that id is registered."""


class HostUnavailable(FluidError):
    """No registered host can take the work (down, draining, offline or full)."""


class WrongHost(FluidError):
    """Work placed on one host started on another."""


class OnAnotherHost(FluidError):
    """The sandbox or VM lives on another fluid host; only that host can reach it."""


class SchemaError(FluidError):
    """The store's database cannot be brought to the schema this fluid needs."""
