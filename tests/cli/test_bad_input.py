"""Bad input gets a clear, specific error and leaves nothing behind."""

from __future__ import annotations

import socket

import pytest

from infra.errors import (
    ImageInUse,
    ImageNotFound,
    InvalidName,
    LibvirtUnavailable,
    NoFreePort,
    SandboxNotFound,
    SandboxNotReady,
)
from infra.host import images
from infra.machines import sandboxes
from tests.conftest import fluid, leftovers


def nothing_left(settings, sandbox_id: str) -> None:
    assert leftovers(sandbox_id, settings) == []


def test_an_unknown_image_is_refused_and_nothing_is_created(golden_image, settings):
    with pytest.raises(ImageNotFound, match="no image 'no-such-image'.*debian-12"):
        sandboxes.create("bad-image", image="no-such-image", settings=settings)
    nothing_left(settings, "bad-image")
    r = fluid("sandbox", "create", "--name", "bad-image", "--image", "no-such-image", check=False)
    assert r.returncode == 1 and b"no image 'no-such-image'" in r.stderr and r.stdout == b""


@pytest.mark.parametrize("name", ["../x", "x" * 300, "Upper", "-lead", "a/b", ""])
def test_bad_names_are_refused(settings, name):
    with pytest.raises(InvalidName, match="invalid sandbox name"):
        sandboxes.create(name, settings=settings)
    r = fluid("sandbox", "create", f"--name={name}", check=False)
    assert r.returncode == 1 and b"invalid sandbox name" in r.stderr


def test_libvirt_not_running_is_reported_with_how_to_start_it(golden_image, settings):
    dead = settings.model_copy(update={"libvirt_uri": "qemu:///system?socket=/nonexistent/sock"})
    with pytest.raises(LibvirtUnavailable, match="libvirtd -d"):
        sandboxes.create("no-libvirt", settings=dead)
    nothing_left(settings, "no-libvirt")


def test_no_free_port_is_reported_and_nothing_is_created(golden_image, settings):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        full = settings.model_copy(update={"port_range": (port, port)})
        with pytest.raises(NoFreePort, match="FLUID_PORT_RANGE"):
            sandboxes.create("no-port", settings=full)
    nothing_left(settings, "no-port")


def test_destroying_a_missing_sandbox_says_so(settings):
    with pytest.raises(SandboxNotFound):
        sandboxes.destroy("never-existed", settings)
    r = fluid("sandbox", "destroy", "never-existed", check=False)
    assert r.returncode == 1 and b"no sandbox 'never-existed'" in r.stderr


def test_exec_in_a_missing_sandbox_says_so(settings):
    r = fluid("sandbox", "exec", "never-existed", "--", "true", check=False)
    assert r.returncode == 1 and b"no sandbox 'never-existed'" in r.stderr


def test_an_image_version_in_use_cannot_be_deleted(two_sandboxes, golden_image, settings):
    with pytest.raises(ImageInUse, match="destroy those sandboxes first"):
        images.delete(golden_image.name, golden_image.version, settings)
    assert golden_image.disk_path.exists()


def test_a_boot_past_its_deadline_fails_with_the_console_tail(golden_image, settings):
    # A cold boot: a warm start would be ready well within the deadline.
    hurried = settings.model_copy(update={"ready_timeout_s": 3.0, "warm_slots": 0})
    with pytest.raises(SandboxNotReady, match="FLUID_READY_TIMEOUT_S") as err:
        sandboxes.create("too-slow", settings=hurried)
    assert "console tail:" in str(err.value)
    nothing_left(settings, "too-slow")
