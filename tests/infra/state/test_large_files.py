"""Large files are captured whole, by streaming: a file of 150 MB (far over what travels inline
in a capture's output) is stored by its hash while the host's memory stays flat, shown as
binary with its size, exported with `copy` and reproduced by the replay; a file that changes
between its hash and its transfer, and captures past the per-file or per-capture limits, are
refused or left out with a message that says what to do.

One sandbox of the module's own, plus the replay's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.ansible.verification import verify
from infra.machines import sandboxes
from infra.settings import FluidSettings
from infra.state import capture, playbook_yaml
from infra.state.base import ChangeSet
from infra.state.diff import compare
from infra.state.export import ROLE, export
from scripts.measure_capture import measured_capture
from tests.ansible_lint import lint_playbook
from tests.conftest import captured_sandbox, refused_capture, run_ok

pytestmark = pytest.mark.vm

SANDBOX = "bigfiles"
BIG = "/opt/big.bin"
BIG_SIZE = 150 * 10**6
# The host's memory may grow by this much while it captures the 150 MB file: far below its
# size (inline, the old way, the file took its size several times over: stdout, base64, bytes).
RSS_GROWTH_MAX = 64 << 20


def _run(command: str, settings: FluidSettings, timeout: float = 600) -> str:
    return run_ok(SANDBOX, command, settings, timeout=timeout)


@pytest.fixture(scope="module")
def box(golden_image, settings: FluidSettings) -> Iterator[sandboxes.Sandbox]:
    with captured_sandbox(SANDBOX, "before", settings) as made:
        yield made


@pytest.fixture(scope="module")
def big(box, settings: FluidSettings) -> dict:
    """The 150 MB random file made in the sandbox and captured (checkpoint "after") in a child
    process; its sha256 as the guest computes it, and the capture's measurements."""
    out = _run(f"head -c {BIG_SIZE} /dev/urandom > {BIG} && sha256sum {BIG}", settings)
    # In a fresh Python: the capture's own memory, nothing the test process holds.
    measured = measured_capture(SANDBOX, settings, checkpoint="after")
    return {"sha256": out.split()[0], **measured}


@pytest.fixture(scope="module")
def changes(big, settings: FluidSettings) -> ChangeSet:
    return compare(
        capture.load(SANDBOX, "before", settings),
        capture.load(SANDBOX, "after", settings),
        settings=settings,
    )


@pytest.mark.timeout(1800)
def test_a_large_file_is_stored_by_its_hash_while_host_memory_stays_flat(
    big: dict, settings: FluidSettings
) -> None:
    store = capture.blob_store(settings)
    assert store.size(big["sha256"]) == BIG_SIZE
    entry = capture.load(SANDBOX, "after", settings).state("files").entries[BIG]
    assert (entry.sha256, entry.size) == (big["sha256"], BIG_SIZE)
    # VmHWM of the capturing process, reset just before the capture: its own peak.
    assert big["growth"] < RSS_GROWTH_MAX, big
    assert not list((settings.home / "blobs" / "incoming").glob("*")), "a part was left"


def test_the_diff_shows_it_as_binary_with_its_size(changes: ChangeSet) -> None:
    exported = {(c.key, c.action) for c in changes.of("files") if c.exported}
    assert exported == {(BIG, "added")}, changes.of("files")
    (change,) = [c for c in changes.of("files") if c.key == BIG]
    assert change.binary and change.text_diff is None
    assert f"binary content, {BIG_SIZE} bytes (143.1 MiB)" in change.details


@pytest.mark.timeout(2400)
def test_it_is_exported_with_copy_and_the_replay_reproduces_it(
    big: dict, changes: ChangeSet, settings: FluidSettings, tmp_path: Path
) -> None:
    playbook = export(changes, tmp_path / "playbook", settings)
    tasks = playbook_yaml.load((playbook / "roles" / ROLE / "tasks" / "main.yml").read_text())
    (task,) = [t for t in tasks if t.get("ansible.builtin.copy", {}).get("dest") == BIG]
    copied = playbook / "roles" / ROLE / "files" / task["ansible.builtin.copy"]["src"]
    assert copied.stat().st_size == BIG_SIZE
    assert task["ansible.builtin.copy"]["src"] == BIG.removeprefix("/")  # under its path
    lint_playbook(playbook)
    report = verify(playbook, settings=settings)
    assert report.passed, (report.error, report.summary(), report.residual)
    assert report.residual == []
    assert report.idempotence is not None and report.idempotence.changed_total == 0


def test_a_file_that_changes_between_its_hash_and_its_transfer_is_refused(
    big: dict, settings: FluidSettings
) -> None:
    # Appended to every 50 ms: the bytes the host streams are never the ones the probe hashed.
    _run(
        "head -c 6000000 /dev/urandom > /opt/growing.bin\n"
        "setsid sh -c 'while :; do head -c 4096 /dev/urandom >> /opt/growing.bin; sleep 0.05;"
        " done' </dev/null >/dev/null 2>&1 &\n"
        "echo $! > /run/growing.pid",
        settings,
    )
    try:
        e = refused_capture(SANDBOX, settings, "changed or went since the files probe hashed it")
        assert "'/opt/growing.bin'" in str(e) and "capture again" in str(e)
    finally:
        _run("kill $(cat /run/growing.pid); sleep 0.2; rm -f /opt/growing.bin", settings)


def test_past_the_per_capture_total_a_capture_is_refused_whole(
    big: dict, settings: FluidSettings
) -> None:
    _run("head -c 10000000 /dev/urandom > /opt/ten.bin", settings)
    small = settings.model_copy(update={"capture_max_total": 8 << 20})
    e = refused_capture(SANDBOX, small, "more than the 8388608 one capture takes")
    assert "FLUID_CAPTURE_MAX_TOTAL" in str(e)


def test_a_file_past_the_per_file_limit_is_not_exported_and_says_why(
    big: dict, settings: FluidSettings
) -> None:
    _run("[ -f /opt/ten.bin ] || head -c 10000000 /dev/urandom > /opt/ten.bin", settings)
    small = settings.model_copy(update={"capture_max_file": 8 << 20})
    after = capture.capture(SANDBOX, checkpoint="over", settings=small)
    entry = after.state("files").entries["/opt/ten.bin"]
    assert not capture.blob_store(settings).has(entry.sha256)
    cs = compare(capture.load(SANDBOX, "after", settings), after, settings=settings)
    (change,) = [c for c in cs.of("files") if c.key == "/opt/ten.bin"]
    assert not change.exported
    assert "10000000 bytes" in change.note and "FLUID_CAPTURE_MAX_FILE" in change.note
    # Raised, the next capture streams it in, though the file did not change since.
    again = capture.capture(SANDBOX, checkpoint="raised", settings=settings)
    assert capture.blob_store(settings).size(again.state("files").entries["/opt/ten.bin"].sha256)


def test_a_large_file_holding_a_private_key_is_never_kept(
    big: dict, settings: FluidSettings
) -> None:
    # The key block straddles two of the chunks the probe hashes the file in (its first read
    # takes 4 MiB + 1 byte, then 1 MiB at a time): the search must find it all the same.
    _run(
        "f=/opt/keyed.bin; head -c 5242871 /dev/urandom > $f\n"
        "printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjE=\\n"
        "-----END OPENSSH PRIVATE KEY-----\\n' >> $f\n"
        "head -c 1000000 /dev/urandom >> $f",
        settings,
    )
    after = capture.capture(SANDBOX, checkpoint="keyed", settings=settings)
    entry = after.state("files").entries["/opt/keyed.bin"]
    assert entry.secret == "private key material"
    assert not capture.blob_store(settings).has(entry.sha256)
    cs = compare(capture.load(SANDBOX, "after", settings), after, settings=settings)
    (change,) = [c for c in cs.of("files") if c.key == "/opt/keyed.bin"]
    assert not change.exported and "private key material" in (change.note or "")
