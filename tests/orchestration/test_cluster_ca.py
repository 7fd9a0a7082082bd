"""One SSH CA for the cluster: the first host to join saves its CA as the Prefect Secret block,
a new host installs that key as its own, and a host that already has another CA is refused
with how to resolve it (never silently switched). Real Prefect server, real key files."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.blocks.system import Secret

from infra.settings import FluidSettings
from infra.transport.ssh_ca import CertificateAuthority, authority
from orchestration import cluster_ca
from orchestration.cluster_ca import ClusterCAMismatch


@pytest.fixture
def cluster(prefect_stack, settings: FluidSettings) -> CertificateAuthority:
    """The cluster's CA, as the session's host made it the cluster's by joining first."""
    return cluster_ca.join(settings)


def a_host(tmp_path: Path, name: str) -> FluidSettings:
    return FluidSettings(home=tmp_path / name, host_id=name)


def test_the_first_host_to_join_shares_its_own_ca(cluster, settings) -> None:
    assert cluster.public_key_line() == authority(settings).public_key_line()
    shared = CertificateAuthority.from_private_key(Secret.load(cluster_ca.BLOCK).get())
    assert shared.public_key_line() == cluster.public_key_line()


def test_a_new_host_takes_the_clusters_ca_as_its_own(cluster, tmp_path) -> None:
    new = a_host(tmp_path, "t-new")
    assert not new.ca_key_path.exists()

    cluster_ca.join(new)

    assert authority(new).public_key_line() == cluster.public_key_line()
    assert new.ca_key_path.stat().st_mode & 0o077 == 0


def test_a_host_with_another_ca_is_refused_and_keeps_its_own(cluster, tmp_path) -> None:
    other = a_host(tmp_path, "t-other")
    own = authority(other)  # made before it joined
    assert own.public_key_line() != cluster.public_key_line()

    with pytest.raises(ClusterCAMismatch, match=rf"{other.ca_key_path}\) is not the cluster's"):
        cluster_ca.join(other)

    assert authority(other).public_key_line() == own.public_key_line()
