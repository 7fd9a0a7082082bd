"""One SSH CA for the whole cluster, kept in a Prefect Secret block every host reads.

The first host whose worker starts (`fluid worker start`) saves its CA key as the block; every
later host installs the block's key as its own CA key file, so guests, production VMs and
certificates agree whichever host made or reaches them. A host that already has a different
CA (made before it joined) is refused with how to resolve it, never silently switched.
"""

from __future__ import annotations

from prefect.blocks.system import Secret
from prefect.exceptions import ObjectAlreadyExists

from infra.errors import FluidError
from infra.settings import FluidSettings, get_settings
from infra.transport.ssh_ca import CertificateAuthority, authority

BLOCK = "fluid-ssh-ca"


class ClusterCAMismatch(FluidError):
    """This host's CA is not the cluster's."""


def _shared() -> str | None:
    try:
        return str(Secret.load(BLOCK).get())
    except ValueError:  # Prefect: no block document of that name
        return None


def join(settings: FluidSettings | None = None) -> CertificateAuthority:
    """Make this host's CA the cluster's (saving it as the cluster's when there is none yet)."""
    settings = settings or get_settings()
    shared = _shared()
    if shared is None:
        own = authority(settings)
        try:
            Secret(value=own.private_key_openssh()).save(BLOCK, overwrite=False)
            return own
        except (ObjectAlreadyExists, ValueError):  # another host saved it first
            shared = _shared()
            if shared is None:
                raise
    cluster = CertificateAuthority.from_private_key(shared)
    if settings.ca_private_key is not None:
        mine = CertificateAuthority.from_private_key(settings.ca_private_key.get_secret_value())
        where = "FLUID_CA_PRIVATE_KEY"
    elif settings.ca_key_path.exists():
        mine = authority(settings)
        where = str(settings.ca_key_path)
    else:
        return CertificateAuthority.install(settings.ca_key_path, shared)
    if mine.public_key_line() != cluster.public_key_line():
        raise ClusterCAMismatch(
            f"this host's SSH CA ({where}) is not the cluster's (the Prefect Secret block "
            f"{BLOCK!r}): its sandboxes and production VMs would not trust the other hosts' "
            f"certificates. Destroy what this host made with its own CA and move {where} "
            "away (or unset it), then start the worker again to install the cluster's CA"
        )
    return cluster
