"""An imported cloud image boots through its own bootloader and trusts fluid via the seed."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

from infra.errors import ImageNotFound, SandboxNotFound
from infra.host import images
from infra.machines import lifecycle, sandboxes
from infra.records import store
from infra.settings import FluidSettings
from tests.cloud_image import cloud_image
from tests.conftest import fluid, leftovers

pytestmark = pytest.mark.vm

CACHE_DIR = Path("/var/lib/fluid/cache/test-cloud-image")
IMAGE = "cloudy"
SANDBOX = "cloudy-1"
# cloud-init's four stages run a Python interpreter each; under TCG that takes minutes.
READY_TIMEOUT_S = 900.0


@pytest.fixture(scope="module")
def cloud_qcow2() -> Path:
    """A Debian 12 cloud-style qcow2 that knows nothing of fluid (built once, then cached)."""
    return cloud_image(CACHE_DIR)


def _run(command: str, settings: FluidSettings) -> str:
    """Run `command` in the sandbox over SSH with a fluid certificate; its stdout on success."""
    r = sandboxes.run(SANDBOX, command, timeout=120, settings=settings)
    assert r.exit_status == 0, (command, r.stdout_text, r.stderr_text)
    return r.stdout_text


# The image build (first run only) and a cloud-init boot under TCG both count against this.
@pytest.mark.timeout(3600)
def test_an_imported_cloud_image_boots_and_trusts_fluid(
    cloud_qcow2: Path, settings: FluidSettings
) -> None:
    versions: list[str] = []
    try:
        out = json.loads(
            fluid("image", "import", str(cloud_qcow2), "--name", IMAGE, "--json").stdout
        )
        versions.append(out["version"])
        assert (out["name"], out["source"], out["cloud_init"]) == (IMAGE, "import", True)
        assert out["kernel"] is None  # so the sandbox boots through the image's own GRUB

        boot_settings = settings.model_copy(update={"ready_timeout_s": READY_TIMEOUT_S})
        try:
            start = time.monotonic()
            box = sandboxes.create(SANDBOX, image=IMAGE, settings=boot_settings)
            print(f"\n{SANDBOX}: ready in {time.monotonic() - start:.0f} s")
            assert (box.image, box.image_version, box.state) == (IMAGE, versions[0], "running")

            # A command runs as root over SSH with a certificate for this sandbox's principal,
            # which only the seed can have told the guest.
            assert _run("id -un", settings).split() == ["root"]
            assert _run("cat /etc/ssh/fluid_principals", settings).split() == [
                lifecycle.principal(SANDBOX)
            ]
            # cloud-init found the seed and finished without errors.
            assert _run("cloud-id", settings).strip() == "nocloud"
            assert "status: done" in _run("cloud-init status --wait", settings)
            # GRUB booted the image's own kernel (fluid's direct boot passes fluid.ca=).
            cmdline = _run("cat /proc/cmdline", settings)
            assert "BOOT_IMAGE=" in cmdline and "root=UUID=" in cmdline
            assert "fluid." not in cmdline

            sshd = set(_run("sshd -T", settings).splitlines())
            assert {
                "passwordauthentication no",
                "kbdinteractiveauthentication no",
                "trustedusercakeys /etc/ssh/fluid_user_ca.pub",
                "authorizedprincipalsfile /etc/ssh/fluid_principals",
            } <= sshd

            assert _run("passwd -S root", settings).split()[1] == "L"
            assert _run("getent shadow root", settings).split(":")[1].startswith("!")

            # The key fluid learned from the console is the one cloud-init generated.
            with store.session(settings) as s:
                learned = s.get(store.SandboxRecord, SANDBOX).host_key
            guest_key = _run("cat /etc/ssh/ssh_host_ed25519_key.pub", settings).split()[:2]
            assert learned == " ".join(guest_key)
            assert _run("ls /etc/ssh", settings).split().count("ssh_host_ed25519_key") == 1
            assert "ssh_host_rsa_key" not in _run("ls /etc/ssh", settings).split()
        finally:
            with contextlib.suppress(SandboxNotFound):
                sandboxes.destroy(SANDBOX, settings)
        assert leftovers(SANDBOX, settings) == []
    finally:
        for version in versions:
            with contextlib.suppress(ImageNotFound):
                images.delete(IMAGE, version, settings)
    for version in versions:
        with pytest.raises(ImageNotFound):
            images.resolve(IMAGE, version, settings)
