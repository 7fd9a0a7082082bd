"""A hostile guest gains nothing from a capture or a file tool: its hashes never name a host
path, its content is hashed again, everything it sends is bounded, secrets are never kept.

One sandbox of the module's own: its files journal is replaced by a liar the tests write.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator

import pytest

from infra.agents.tools import Toolbox
from infra.errors import GuestDataRefused
from infra.guardrails.policy import Guardrails
from infra.machines import janitor, sandboxes
from infra.settings import FluidSettings
from infra.state import capture
from infra.state.blobs import InvalidHash
from infra.state.diff import compare
from infra.state.kinds import files
from tests.conftest import capture_writes, captured_sandbox, refused_capture, run_ok

pytestmark = pytest.mark.vm

SANDBOX = "hostile"
# Where the module's file-tool tests work: /var/tmp is never walked by captures.
SCRATCH = "/var/tmp/hostile"

# Run in the guest as root in place of the real journal: it writes its pid file as the real one
# does (the asking shell checks pid and start time), and answers every request with the bytes
# of ANSWER, whatever was asked.
FAKE_JOURNAL = r"""
import os, sys, time
requests, answers, answer = sys.argv[1:4]
def start_time(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[19]
os.makedirs(requests, exist_ok=True)
os.makedirs(answers, exist_ok=True)
if not os.path.exists(os.path.join(answers, "wake")):
    os.mkfifo(os.path.join(answers, "wake"), 0o600)
with open(os.path.join(answers, "pid"), "w") as f:
    f.write(f"{os.getpid()} {start_time('self')}\n")
while True:
    for name in os.listdir(requests):
        if not name.startswith("req-"):
            continue
        os.unlink(os.path.join(requests, name))
        token = name[4:]
        with open(answer, "rb") as f:
            text = f.read()
        tmp = os.path.join(answers, token + ".tmp")
        with open(tmp, "wb") as f:
            f.write(text)
        os.rename(tmp, os.path.join(answers, token + ".done"))
        try:
            fd = os.open(os.path.join(answers, "wake"), os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"\n")
            os.close(fd)
        except OSError:
            pass
    time.sleep(0.05)
"""


def _run(command: str, settings: FluidSettings, timeout: float = 300) -> str:
    return run_ok(SANDBOX, command, settings, timeout=timeout)


@pytest.fixture(scope="module")
def box(golden_image, settings: FluidSettings) -> Iterator[sandboxes.Sandbox]:
    """The module's sandbox, with a first capture taken while only fluid has run in it."""
    with captured_sandbox(SANDBOX, "base", settings) as made:
        yield made


def _stored_bytes(settings: FluidSettings) -> bytes:
    """All blobs and captures (decompressed), to look for bytes that must never be there."""
    out = []
    for root in (settings.home / "blobs", settings.home / "captures"):
        for p in root.rglob("*") if root.is_dir() else []:
            if p.is_file():
                data = p.read_bytes()
                out.append(gzip.decompress(data) if p.name.endswith(".gz") else data)
    return b"\n".join(out)


class Liar:
    """The guest's files journal replaced by one that answers what the test wrote."""

    def __init__(self, settings: FluidSettings) -> None:
        self.settings = settings

    def answers(self, entries: list[dict] | bytes) -> None:
        """The next captures get this listing as the files journal's answer."""
        if isinstance(entries, list):
            names = json.dumps({"users": {"0": "root"}, "groups": {"0": "root"}})
            meta = json.dumps({"token": None, "delta": False})
            entries = f"{names}\n{json.dumps(entries)}\n{meta}\n".encode()
        with sandboxes.guest(SANDBOX, self.settings) as g:
            g.upload_bytes(entries, "/root/forged-answer", mode=0o600)


@pytest.fixture
def liar(box, settings: FluidSettings) -> Iterator[Liar]:
    version = files.probe_version()
    requests, answers = f"{files.REQUESTS}/{version}", f"{files.ANSWERS}/{version}"
    with sandboxes.guest(SANDBOX, settings) as g:
        g.upload_bytes(FAKE_JOURNAL.encode(), "/root/fake_journal.py", mode=0o700)
    _run(
        "pkill -f 'files_probe[.]py --serve'; sleep 0.5\n"
        f"setsid python3 /root/fake_journal.py {requests} {answers} /root/forged-answer "
        "</dev/null >/dev/null 2>&1 &\n"
        "pid=$!\n"
        f'for i in $(seq 100); do [ "$(cut -d" " -f1 {answers}/pid)" = "$pid" ] && exit 0; '
        "sleep 0.1; done; exit 1",
        settings,
    )
    try:
        yield Liar(settings)
    finally:
        # The next capture finds no journal alive and starts the real one.
        _run(f"pkill -f 'fake_journal[.]py'; rm -f {answers}/pid /root/forged-answer", settings)


def _entry(path: str, sha: object, content: bytes | None = None, **extra) -> dict:
    e = {"p": path, "k": "f", "m": 0o644, "u": 0, "g": 0, "s": 1, "h": sha, "i": [1, 2, 3, 4]}
    if content is not None:
        e["c"] = base64.b64encode(content).decode()
        e["s"] = len(content)
    return e | extra


def test_a_forged_hash_naming_a_host_file_is_refused_and_reads_nothing(
    liar: Liar, settings: FluidSettings
) -> None:
    ca_key = settings.ca_key_path.read_bytes()
    # The hash is a path: joined to the blob store's root, an absolute one would win.
    liar.answers([_entry("/etc/fluid-forged", str(settings.ca_key_path))])
    e = refused_capture(SANDBOX, settings, "capture of hostile refused")
    assert "'/etc/fluid-forged'" in str(e) and "not 64 lowercase hex digits" in str(e)
    liar.answers([_entry("/etc/fluid-forged", "/etc/hostname")])
    refused_capture(SANDBOX, settings, "/etc/hostname")
    assert ca_key not in _stored_bytes(settings)
    # Nor can any caller ask the store for a path instead of a hash.
    for forged in (str(settings.ca_key_path), "../../ca/fluid_ca", "A" * 64):
        with pytest.raises(InvalidHash):
            capture.blob_store(settings).get(forged)


def test_a_malformed_hash_or_content_that_does_not_match_its_hash_is_refused(
    liar: Liar, settings: FluidSettings
) -> None:
    liar.answers([_entry("/etc/fluid-forged", "abc123")])
    refused_capture(SANDBOX, settings, "'abc123' as the sha256 of '/etc/fluid-forged'")
    claimed = hashlib.sha256(b"what the reviewer would see").hexdigest()
    liar.answers([_entry("/etc/fluid-forged", claimed, b"what would be applied")])
    e = refused_capture(SANDBOX, settings, "whose sha256 is")
    assert claimed in str(e) and "'/etc/fluid-forged'" in str(e)
    assert b"what would be applied" not in _stored_bytes(settings)
    liar.answers([_entry("/etc/fluid-forged", claimed, content=None, c="not base64!")])
    refused_capture(SANDBOX, settings, "not base64")
    liar.answers([{"p": "/etc/fluid-forged", "k": "socket?", "m": 0, "u": 0, "g": 0}])
    refused_capture(SANDBOX, settings, "malformed")


def test_oversized_content_and_a_huge_listing_are_refused(
    liar: Liar, settings: FluidSettings
) -> None:
    small = settings.model_copy(update={"capture_max_content": 1 << 20})
    big = os.urandom(1 << 20) + b"!"
    liar.answers([_entry("/opt/big.bin", hashlib.sha256(big).hexdigest(), big)])
    refused_capture(SANDBOX, small, "1048577 bytes, more than the 1048576")
    # A listing far longer than any real one: refused before a byte of it is parsed.
    few = settings.model_copy(update={"capture_max_entries": 200_000})
    huge = [{"p": "/x", "k": "d", "m": 0, "u": 0, "g": 0}] * 300_000
    liar.answers(huge)
    refused_capture(SANDBOX, few, "more than 200000")


def test_a_lying_guest_cannot_poison_the_hash_index_other_sandboxes_trust(
    liar: Liar, settings: FluidSettings
) -> None:
    index = settings.cache_dir / "hash-index" / capture._index_name(*_image(settings))
    # The module's first capture was trusted: the image's index holds what it saw.
    trusted = json.loads(gzip.decompress(index.read_bytes()))
    assert "/etc/hostname" in trusted and index.stat().st_mode & 0o777 == 0o600
    sha = hashlib.sha256(b"not what the image holds").hexdigest()
    liar.answers([_entry("/etc/fluid-poison", sha), _entry("/etc/os-release", sha)])
    forged = capture.capture(SANDBOX, settings=settings)
    assert forged.state("files").entries["/etc/fluid-poison"].sha256 == sha
    after = json.loads(gzip.decompress(index.read_bytes()))
    assert "/etc/fluid-poison" not in after
    assert after.get("/etc/os-release") == trusted.get("/etc/os-release")


def _image(settings: FluidSettings) -> tuple[str, str]:
    box = sandboxes.get(SANDBOX, settings)
    return box.image, box.image_version


def test_secrets_a_lying_guest_sends_anyway_are_not_kept(
    liar: Liar, settings: FluidSettings
) -> None:
    shadow = b"root:$y$j9T$forgedsalt$forgedhash:19000:0:99999:7:::\n"
    key = (
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        b"-----END OPENSSH PRIVATE KEY-----\n"
    )
    host_key = os.urandom(64)
    sent = {
        "/etc/shadow": shadow,
        "/opt/app/deploy.key": key,
        "/etc/ssh/ssh_host_ed25519_key": host_key,
    }
    liar.answers([_entry(p, hashlib.sha256(c).hexdigest(), c) for p, c in sent.items()])
    cap = capture.capture(SANDBOX, settings=settings)
    store = capture.blob_store(settings)
    for path, content in sent.items():
        assert not store.has(hashlib.sha256(content).hexdigest()), path
        assert cap.state("files").entries[path].secret
    stored = _stored_bytes(settings)
    assert b"forgedhash" not in stored and b"b3BlbnNzaC1rZXktdjEAAAAA" not in stored


def test_a_capture_past_its_byte_cap_is_refused_whole(box, settings: FluidSettings) -> None:
    capture.capture(SANDBOX, settings=settings)  # the real journal again, and a base to delta on
    # Real files this time: 3 MB of text content a capture would carry base64.
    _run(
        "mkdir -p /srv/hostile-big && for i in 1 2 3; do "
        "head -c 750000 /dev/urandom | base64 -w 76 > /srv/hostile-big/$i.txt; done",
        settings,
    )
    small = settings.model_copy(update={"capture_max_bytes": 1 << 20})
    before = capture_writes(settings)
    started = time.monotonic()
    with pytest.raises(GuestDataRefused, match="more than 1048576 bytes"):
        capture.capture(SANDBOX, checkpoint="too-big", settings=small)
    assert time.monotonic() - started < 120
    assert capture_writes(settings) == before
    with pytest.raises(capture.CaptureNotFound):
        capture.load(SANDBOX, "too-big", settings)
    # With the default cap, the same sandbox captures fine.
    big = capture.capture(SANDBOX, settings=settings).state("files").entries
    assert big["/srv/hostile-big/3.txt"].size > 900_000


def test_shadow_host_keys_and_private_keys_leave_no_blob_and_are_not_exported(
    box, settings: FluidSettings
) -> None:
    capture.capture(SANDBOX, checkpoint="before-secrets", settings=settings)
    _run(
        "set -e\n"
        "echo 'root:fluid-test-secret' | chpasswd\n"
        "head -c 400 /dev/urandom | base64 > /etc/ssh/ssh_host_fluidtest_key\n"
        "mkdir -p /srv/hostile-keys\n"
        "ssh-keygen -q -t ed25519 -N '' -C test -f /srv/hostile-keys/deploy\n",
        settings,
    )
    after = capture.capture(SANDBOX, checkpoint="after-secrets", settings=settings)
    store = capture.blob_store(settings)
    with sandboxes.guest(SANDBOX, settings) as g:
        for path in ("/etc/shadow", "/etc/ssh/ssh_host_fluidtest_key", "/srv/hostile-keys/deploy"):
            content = g.read_bytes(path)
            assert not store.has(hashlib.sha256(content).hexdigest()), path
            assert content not in _stored_bytes(settings), path
        public = g.read_bytes("/srv/hostile-keys/deploy.pub")
    assert store.has(hashlib.sha256(public).hexdigest()), "ordinary content is still kept"
    entries = after.state("files").entries
    assert entries["/etc/shadow"].secret == "password hashes"
    assert entries["/srv/hostile-keys/deploy"].secret == "private key material"
    changes = compare(capture.load(SANDBOX, "before-secrets", settings), after, settings=settings)
    key = next(c for c in changes.changes if c.key == "/srv/hostile-keys/deploy")
    assert not key.exported and key.text_diff is None
    assert "private key material: not exported" in (key.note or "")
    assert "provision it apart from the playbook" in (key.note or "")
    assert next(c for c in changes.changes if c.key == "/srv/hostile-keys/deploy.pub").exported


@pytest.fixture(scope="module")
def tools(box, settings: FluidSettings) -> Iterator[Toolbox]:
    _run(
        f"set -e\nrm -rf {SCRATCH} && mkdir -p {SCRATCH}/many\n"
        f"truncate -s 100G {SCRATCH}/sparse\n"
        f"mkfifo {SCRATCH}/fifo\n"
        # On a tmpfs: the root filesystem's journal would see (and slow) 100k creations.
        f"mount -t tmpfs -o size=64m,nr_inodes=200k hostile {SCRATCH}/many\n"
        f"cd {SCRATCH}/many && python3 -c \"[open(f'f{{i:06}}', 'w').close() "
        'for i in range(100000)]"\n',
        settings,
        timeout=600,
    )
    with Toolbox(SANDBOX, settings=settings, actor="agent:test", say=lambda _: None) as t:
        yield t


def test_read_file_of_a_device_a_fifo_or_a_huge_sparse_file_returns_at_once(
    tools: Toolbox,
) -> None:
    for path, why in (("/dev/zero", "a character device"), (f"{SCRATCH}/fifo", "a FIFO")):
        started = time.monotonic()
        r = tools.call("read_file", {"path": path})
        assert time.monotonic() - started < 10, path
        assert not r.ok and f"is {why}, not a regular file" in r.content
    started = time.monotonic()
    r = tools.call("read_file", {"path": f"{SCRATCH}/sparse"})
    assert time.monotonic() - started < 15
    assert not r.ok and "binary" in r.content and len(r.content) < 1000
    # Text is shown up to the cap, with how to read further.
    _run(f"seq 1 200000 > {SCRATCH}/long.txt", tools.settings)
    r = tools.call("read_file", {"path": f"{SCRATCH}/long.txt"})
    assert r.ok and r.content.startswith("1\n2\n3\n") and "only the first 64000 bytes" in r.content


def test_list_dir_of_a_directory_of_a_hundred_thousand_entries_is_bounded(
    tools: Toolbox, settings: FluidSettings
) -> None:
    started = time.monotonic()
    r = tools.call("list_dir", {"path": f"{SCRATCH}/many"})
    assert time.monotonic() - started < 20
    lines = r.content.splitlines()
    assert r.ok and len(lines) == 501 and "only 500 entries shown" in lines[-1]
    with sandboxes.guest(SANDBOX, settings) as g:
        listing = g.list_dir(f"{SCRATCH}/many", limit=10)
        assert len(listing.entries) == 10 and listing.more
        # The connection is still good for the next request.
        assert g.read_bytes("/etc/hostname")
        whole = g.list_dir(SCRATCH)
        assert not whole.more and [a.filename for a in whole.entries][:2] == ["fifo", "long.txt"]


def test_an_agent_gets_a_bounded_number_of_checkpoints(box, settings: FluidSettings) -> None:
    rails = Guardrails(max_checkpoints=1)
    with Toolbox(SANDBOX, settings=settings, guardrails=rails, say=lambda _: None) as t:
        assert t.call("checkpoint", {"name": "one"}).ok
        refused = t.call("checkpoint", {"name": "two"})
        assert not refused.ok and "allow 1 checkpoints per sandbox" in refused.content
        assert "(one)" in refused.content and "restore one of them" in refused.content
        assert t.call("restore", {"name": "one"}).ok


def test_the_janitor_prunes_what_nothing_references_and_keeps_the_rest(
    box, settings: FluidSettings
) -> None:
    old = time.time() - 7200
    store = capture.blob_store(settings)
    stray = store.put(b"content no capture names " + os.urandom(8))
    base = gzip.decompress((settings.home / "captures" / SANDBOX / "base.json.gz").read_bytes())
    named = {m.decode() for m in re.findall(rb'"sha256":"([0-9a-f]{64})"', base)}
    kept = next(sha for sha in sorted(named) if store.has(sha))
    gone_dir = settings.home / "captures" / "t-no-record"
    gone_dir.mkdir(parents=True)
    (gone_dir / "x.json.gz").write_bytes(gzip.compress(b"{}"))
    index_dir = settings.cache_dir / "hash-index"
    stale = index_dir / f"no-such-image-v9-{files.probe_version()}.json.gz"
    stale.write_bytes(gzip.compress(b"{}"))
    current = index_dir / capture._index_name(*_image(settings))
    for p in (store.root / stray[:2] / stray, store.root / kept[:2] / kept, gone_dir, stale):
        os.utime(p, (old, old))
    os.utime(current, (old, old))

    report = janitor.sweep(settings=settings)

    assert not store.has(stray) and not gone_dir.exists() and not stale.exists()
    assert store.has(kept) and current.exists()
    assert (settings.home / "captures" / SANDBOX / "base.json.gz").exists()
    pruned = {p.what: p for p in report.pruned}
    assert pruned["blobs"].count >= 1 and pruned["blobs"].bytes >= 33
    assert pruned["capture directories"].count >= 1
    assert pruned["hash-index files"].count >= 1
    assert not [e for e in report.errors if e.startswith("pruning")]


def test_what_fluid_keeps_of_a_capture_is_private(box, settings: FluidSettings) -> None:
    for root in (settings.home / "blobs", settings.home / "captures" / SANDBOX):
        assert root.stat().st_mode & 0o777 == 0o700
        for p in root.rglob("*"):
            assert p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600), p


def test_a_hash_index_that_does_not_hold_up_is_not_sent_to_any_guest() -> None:
    """The index names files a guest may then skip hashing: one that was tampered with (a path
    for a hash, a wrong shape, too many entries, not gzip) is ignored whole."""
    sha = "a" * 64

    def packed(index: object) -> bytes:
        return gzip.compress(json.dumps(index).encode())

    assert capture._valid_index(packed({"/etc/a": [1, 2, 3, 4, sha, False]}), 10)
    for bad in (
        {"/etc/a": [1, 2, 3, 4, "/root/.fluid/ca/fluid_ca", False]},
        {"/etc/a": [1, 2, 3, 4, sha]},
        {"/etc/a": [1, "2", 3, 4, sha, False]},
        {"etc/a": [1, 2, 3, 4, sha, False]},
        {f"/etc/{i}": [1, 2, 3, 4, sha, False] for i in range(11)},
        [["/etc/a", 1, 2, 3, 4, sha, False]],
    ):
        assert capture._valid_index(packed(bad), 10) is None, bad
    assert capture._valid_index(b"not gzip", 10) is None
    assert capture._valid_index(gzip.compress(b"[" + b"0," * 100_000 + b"0]"), 10) is None
