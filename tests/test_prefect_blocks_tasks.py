"""fluid's Prefect blocks and sandbox tasks against a real Prefect server and one real VM."""

import os

# Before Prefect is imported: its settings are read once, and nothing may leave loopback.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
# A task called outside any flow has no flow run to attach its logs to; that is expected here.
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"

import contextlib  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402

from blocks import GoldenImage, LibvirtHost, SSHAuthority  # noqa: E402
from infra.errors import SandboxNotFound  # noqa: E402
from infra.host.libvirt_host import connect, lookup  # noqa: E402
from infra.machines import sandboxes, warm_slots  # noqa: E402
from infra.settings import FluidSettings  # noqa: E402
from infra.transport import ssh_ca
from infra.transport.ssh_ca import CertificateAuthority  # noqa: E402
from tasks.sandbox import (  # noqa: E402
    checkpoint,
    create_sandbox,
    destroy_sandbox,
    restore,
    run_command,
)

REPO = Path(__file__).resolve().parent.parent
BLOCK_SLUGS = ("libvirt-host", "golden-image", "ssh-authority", "production-target")


@pytest.fixture(scope="module")
def prefect_api(prefect_stack) -> str:
    """The session's real Prefect server (with its auth string); returns its API URL."""
    return prefect_stack.api_url


def _prefect_cli(api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "PREFECT_API_URL": api_url,
        # Rich wraps and truncates tables to the terminal width; keep slugs whole.
        "COLUMNS": "250",
    }
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "prefect"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _authority(settings: FluidSettings) -> SSHAuthority:
    CertificateAuthority.load_or_create(settings.ca_key_path)
    return SSHAuthority.from_key_file(settings.ca_key_path)


def test_blocks_register_and_the_ca_key_loads_back_masked(prefect_api: str, tmp_path: Path) -> None:
    settings = FluidSettings(home=tmp_path)

    registered = _prefect_cli(prefect_api, "block", "register", "-m", "blocks")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert "Successfully registered 6 blocks" in registered.stdout

    listed = _prefect_cli(prefect_api, "block", "type", "ls")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    with get_client(sync_client=True) as client:
        for slug in BLOCK_SLUGS:
            assert slug in listed.stdout
            block_type = client.read_block_type_by_slug(slug)
            assert block_type.slug == slug
            assert block_type.description
    with get_client(sync_client=True) as client:
        schema = client.read_block_schema_by_checksum(SSHAuthority._calculate_schema_checksum())
    assert schema.fields["secret_fields"] == ["ca_private_key"]

    authority = _authority(settings)
    key_pem = settings.ca_key_path.read_text()
    authority.save("test-ca", overwrite=True)

    loaded = SSHAuthority.load("test-ca")
    assert loaded.ca_private_key.get_secret_value() == key_pem
    assert str(loaded.ca_private_key) == "**********"
    assert key_pem not in repr(loaded)
    applied = loaded.apply(settings)
    assert applied.ca_private_key is not None
    assert applied.ca_private_key.get_secret_value() == key_pem
    # The CA built from the stored secret is the one whose key file we saved.
    assert (
        ssh_ca.authority(applied).public_key_line()
        == CertificateAuthority.load_or_create(settings.ca_key_path).public_key_line()
    )

    LibvirtHost(memory_mib=768, network="isolated").save("test-host", overwrite=True)
    host = LibvirtHost.load("test-host")
    host_settings = host.settings(settings)
    assert (host_settings.memory_mib, host_settings.network) == (768, "isolated")
    assert host_settings.storage_dir == Path("/var/lib/fluid")
    assert host_settings.home == tmp_path

    GoldenImage(name="debian-12").save("test-image", overwrite=True)
    assert GoldenImage.load("test-image").manifest(host_settings).name == "debian-12"


@flow(name="checkpoint-restore-roundtrip")
def checkpoint_restore_roundtrip(
    home: str, sandbox_name: str, host_block: str, authority_block: str, image_block: str
) -> dict[str, Any]:
    """Boot one sandbox, checkpoint, change it, restore, look, and always destroy it."""
    base = FluidSettings(home=Path(home))
    settings = SSHAuthority.load(authority_block).apply(LibvirtHost.load(host_block).settings(base))
    image = GoldenImage.load(image_block)
    sandbox = create_sandbox(
        sandbox_name,
        image=image.name,
        image_version=image.version,
        agent_id="test-agent",
        ttl_minutes=30,
        settings=settings,
    )
    try:
        first = run_command(sandbox.id, "echo one > /root/first && sync", settings=settings)
        checkpoint(sandbox.id, "before", settings=settings)
        second = run_command(sandbox.id, "echo two > /root/second && sync", settings=settings)
        restore(sandbox.id, "before", settings=settings)
        after = run_command(
            sandbox.id,
            "cat /root/first; if test -e /root/second; then echo SECOND-KEPT; "
            "else echo SECOND-GONE; fi",
            settings=settings,
        )
    finally:
        destroy_sandbox(sandbox.id, settings=settings)
    return {"sandbox": sandbox, "first": first, "second": second, "after": after}


@pytest.mark.vm
def test_flow_checkpoints_restores_and_destroys_one_vm(prefect_api: str, tmp_path: Path) -> None:
    settings = FluidSettings(home=tmp_path)
    _authority(settings).save("roundtrip-ca", overwrite=True)
    LibvirtHost(storage_dir=str(settings.storage_dir)).save("roundtrip-host", overwrite=True)
    GoldenImage(name="debian-12").save("roundtrip-image", overwrite=True)
    name = f"t{uuid.uuid4().hex[:10]}"
    try:
        out = checkpoint_restore_roundtrip(
            str(tmp_path), name, "roundtrip-host", "roundtrip-ca", "roundtrip-image"
        )
    finally:
        # The flow destroys the VM itself; this only catches a flow that died before that.
        with contextlib.suppress(SandboxNotFound):
            sandboxes.destroy(name, settings)
        warm_slots.clear(settings)  # this home's own slot, saved under the shared storage

    domain = out["sandbox"].domain_name
    assert out["sandbox"].id == name
    assert out["sandbox"].state == "running"
    assert out["sandbox"].agent_id == "test-agent"
    assert out["first"].exit_status == 0
    assert out["second"].exit_status == 0
    assert out["after"].exit_status == 0
    assert out["after"].stdout_text.split() == ["one", "SECOND-GONE"]

    conn = connect(settings)
    try:
        assert lookup(conn, domain) is None
        assert domain not in conn.listDefinedDomains()
        assert all(d.name() != domain for d in conn.listAllDomains())
    finally:
        conn.close()
    listing = sandboxes.list_sandboxes(settings)
    assert listing.sandboxes == []
    assert domain not in listing.orphan_domains
    assert name not in listing.orphan_disks


def test_destroying_a_missing_sandbox_fails_with_sandbox_not_found(
    prefect_api: str, tmp_path: Path
) -> None:
    settings = FluidSettings(home=tmp_path)
    state = destroy_sandbox("no-such-sandbox", settings=settings, return_state=True)
    assert state.is_failed()
    assert "SandboxNotFound" in (state.message or "")
    assert "no-such-sandbox" in (state.message or "")
    assert isinstance(state.result(raise_on_failure=False), SandboxNotFound)
    # A missing sandbox is not transient: the task must not have waited out its retries.
    with get_client(sync_client=True) as client:
        task_run = client.read_task_run(state.state_details.task_run_id)
    assert task_run.run_count == 1
