"""`fluid image publish | sync | verify | list`: an image published on one host is copied to
another with `--from`, verified before use, and listed with its global version and holders.

No VMs: each "host" is the environment `fluid` reads (its own host id, home and storage) on
one shared SQLite store; the image is a few bytes standing in for disk, kernel and initrd.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from infra.settings import FluidSettings, get_settings
from tests.fake_image import FAKE_IMAGE, flip_a_byte, host_settings, make_image


class Hosts:
    """Switches the environment `fluid` runs in between fake hosts."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch

    def be(self, host: str) -> FluidSettings:
        settings = host_settings(host, self.tmp_path)
        for var, value in (
            ("FLUID_HOST_ID", host),
            ("FLUID_HOME", str(settings.home)),
            ("FLUID_STORAGE_DIR", str(settings.storage_dir)),
            ("FLUID_DATABASE_URL", settings.db_url),
        ):
            self.monkeypatch.setenv(var, value)
        get_settings.cache_clear()
        return settings


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield Hosts(tmp_path, monkeypatch)
    get_settings.cache_clear()


def fluid(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def fluid_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = fluid(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_publish_then_sync_on_another_host_then_list(hosts, capsys):
    a = hosts.be("host-a")
    built = make_image(a, "v2")
    code, out, _ = fluid(capsys, "image", "publish", FAKE_IMAGE)
    assert code == 0
    version = out.split()[1]
    assert out.startswith(f"{FAKE_IMAGE} {version} published from host-a (v2, 3 parts)")

    code, out, _ = fluid(capsys, "image", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["NAME", "VERSION", "GLOBAL", "SHA256"]
    assert row.split()[:4] == [FAKE_IMAGE, "v2", version, built.sha256[:12]]

    hosts.be("host-b")
    code, out, err = fluid(capsys, "image", "sync", FAKE_IMAGE, "--from", str(built.directory))
    assert code == 0, err
    assert f"{FAKE_IMAGE} {version} copied and verified" in out
    assert "copying disk.qcow2" in err

    again = fluid_json(capsys, "image", "sync", FAKE_IMAGE, "--from", str(built.directory))
    assert (again["version"], again["copied"]) == (version, False)

    listed = fluid_json(capsys, "image", "list")["images"]
    assert [(i["name"], i["version"], i["content_version"]) for i in listed] == [
        (FAKE_IMAGE, version, version)
    ]
    cluster = fluid_json(capsys, "image", "list", "--cluster")["images"]
    assert [(c["version"], c["published_by"], c["hosts"]) for c in cluster] == [
        (version, "host-a", ["host-a", "host-b"])
    ]
    assert fluid_json(capsys, "image", "verify", FAKE_IMAGE)["version"] == version


def test_a_corrupted_source_is_refused_with_both_digests(hosts, capsys):
    built = make_image(hosts.be("host-a"))
    assert fluid(capsys, "image", "publish", FAKE_IMAGE, "--version", "v1")[0] == 0
    flip_a_byte(built.directory / "initrd.img")

    b = hosts.be("host-b")
    code, out, err = fluid(capsys, "image", "sync", FAKE_IMAGE, "--from", str(built.directory))
    assert (code, out) == (1, "")
    assert "part initrd.img is sha256" in err and "nothing of it kept" in err
    assert fluid_json(capsys, "image", "list")["images"] == []
    assert not any(p.is_dir() for p in (b.images_dir / FAKE_IMAGE).iterdir())


def test_sync_needs_a_published_image(hosts, capsys, tmp_path):
    hosts.be("host-b")
    code, _, err = fluid(capsys, "image", "sync", FAKE_IMAGE, "--from", str(tmp_path))
    assert code == 1 and "not published" in err and "fluid image publish" in err
