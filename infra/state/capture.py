"""Take a capture of a running sandbox in one SSH round trip, and keep captures on disk.

Everything the guest sends is attacker-written: the whole output is capped (and refused, never
cut, past the cap), its entries counted before any JSON is parsed, every kind's output parsed
and checked (hashes, content, sizes) before anything is written, and only then are memories,
blobs, the stored capture and the hash index written. A refused capture leaves nothing.

Small files' contents travel inline in that output; a file larger than FLUID_CAPTURE_MAX_CONTENT
is only hashed there, then streamed on the same connection into a private part of the blob
store, re-hashed as it arrives, bounded by its reported size, FLUID_CAPTURE_MAX_FILE and
FLUID_CAPTURE_MAX_TOTAL, and renamed into place only with the rest of the capture.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shlex
import shutil
import tarfile
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from infra.errors import FluidError, GuestDataRefused
from infra.host.permissions import private_dir, write_private
from infra.machines import sandbox_records, sandboxes, warm_slots
from infra.settings import FluidSettings, get_settings
from infra.state.base import (
    STAGING,
    UNCHANGED,
    Capture,
    ResourceKind,
    kinds,
    unwatched,
    watch_script,
)
from infra.state.blobs import BlobStore, Incoming, LargeContent, secret_reason, valid_sha
from infra.transport.ssh import GuestConnection

MARK = "@@fluid-kind "
# Sends one file's first N bytes as they are on disk: opened without following a last symlink
# and without blocking (a FIFO swapped in is refused, not waited on), a regular file only.
SEND = r"""
import os, stat, sys
fd = os.open(bytes.fromhex(sys.argv[1]), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
if not stat.S_ISREG(os.fstat(fd).st_mode):
    sys.exit("not a regular file any more")
os.set_blocking(fd, True)
left, out = int(sys.argv[2]), sys.stdout.buffer
while left > 0:
    data = os.read(fd, min(left, 1 << 20))
    if not data:
        break
    out.write(data)
    left -= len(data)
out.flush()
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
"""
# Slowest transfer a streamed file is given time for (bytes/s), beyond a fixed allowance: only
# a guard against a guest that stops sending.
STREAM_MIN_RATE = 1 << 20
STREAM_ALLOWANCE_S = 120.0
# What a malformed probe output raises while it is completed or parsed.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)
# Anything that looks like a sha256 in stored captures and memories keeps its blob.
_HASHES = re.compile(rb"[0-9a-f]{64}")


class CaptureNotFound(FluidError):
    """No capture was stored for that sandbox and checkpoint."""


class Pruned(BaseModel):
    """What one kind of pruning removed."""

    what: str
    count: int
    bytes: int


def blob_store(settings: FluidSettings | None = None) -> BlobStore:
    """Where captured file contents are kept: beside the captures that name them (FLUID_HOME),
    so the janitor knows every reference when it prunes."""
    return BlobStore((settings or get_settings()).home / "blobs")


def _root(settings: FluidSettings) -> Path:
    return settings.captures_dir


def _dir(sandbox_id: str, settings: FluidSettings) -> Path:
    return _root(settings) / sandbox_id


def capture(
    sandbox_id: str,
    *,
    checkpoint: str | None = None,
    trusted: bool = False,
    settings: FluidSettings | None = None,
) -> Capture:
    """Capture every resource kind of a running sandbox; file contents go to the blob store.

    `trusted`: only fluid has run in the sandbox since it was made from its image (a spare's
    base capture, a replay's or a run's "before"), so its hashes may feed the image's shared
    hash index. Any other capture could be a hostile guest's: it must not poison the index
    other sandboxes of the image rely on.
    """
    settings = settings or get_settings()
    start = time.monotonic()
    rec = sandbox_records.record(sandbox_id, settings)
    memories = {
        k.name: _memory(k, sandbox_id, settings) for k in kinds().values() if k.remembered()
    }
    previous = {
        name: _previous(kinds()[name], path, rec.slot, settings) for name, path in memories.items()
    }
    # Only a first capture sends the index to the guest, and only a trusted one adds to it.
    first = previous.get("files") is None
    index = _load_index(rec.image, rec.image_version, settings) if first or trusted else None
    params: dict[str, Any] = {
        "index": index[0] if index else None,
        "previous": previous,
        "max_content": settings.capture_max_content,
    }
    uploads = {path: data for k in kinds().values() for path, data in k.uploads(params).items()}
    # The uploads travel as a tar on the command's stdin: an SFTP session costs ~0.3 s more.
    # The tar makes STAGING itself (0700); one stat then serves every kind that watches files.
    script = ["tar -xf - -C / || exit 1", watch_script(list(kinds().values()))]
    for k in kinds().values():
        script.append(f"echo '{MARK}{k.name}'\n{{\n{k.script(params)}\n}} 2>/dev/null")
    script.append(f"rm -rf {STAGING}")
    limit = settings.capture_max_bytes
    store = blob_store(settings)
    with sandboxes.guest(sandbox_id, settings) as g:
        r = g.run(
            "\n".join(script), timeout=900, output_cap=limit, stdin=_tar(uploads), stop_at_cap=True
        )
        if r.stdout_cut:
            raise GuestDataRefused(
                f"capture of {sandbox_id} refused: the guest sent more than {limit} bytes; "
                "nothing of it was kept (raise FLUID_CAPTURE_MAX_BYTES if the change is really "
                "that large)"
            )
        if r.exit_status != 0 and not r.stdout:
            raise FluidError(f"capture of {sandbox_id} failed: {r.stderr_text[-2000:]}")
        # Each entry is a line or a JSON object, and no entry has 16 values: both are counted
        # before any JSON is parsed, which bounds the objects parsing makes.
        listed = r.stdout.count(b"\n") + r.stdout.count(b"{")
        values = r.stdout.count(b",") // 16
        if max(listed, values) > settings.capture_max_entries:
            raise GuestDataRefused(
                f"capture of {sandbox_id} refused: the guest listed about {max(listed, values)} "
                f"entries, more than {settings.capture_max_entries}; nothing of it was kept "
                "(raise FLUID_CAPTURE_MAX_ENTRIES if the sandbox really holds that many)"
            )
        try:
            outputs = _split(r.stdout.decode("utf-8", errors="surrogateescape"))
            del r  # the parsed states replace it: not held while large files stream in
            states, remember, blobs, reused, large = _check(outputs, previous, settings)
            # Same connection, and only when there is something to stream: a capture without
            # a large new file costs no second round trip.
            parts = _stream_large(g, large, store, settings)
        except GuestDataRefused as e:
            raise GuestDataRefused(
                f"capture of {sandbox_id} refused, nothing of it kept: {e}"
            ) from e
    # Checked whole: now written, blobs first so nothing written names a blob not stored.
    try:
        cap = Capture(
            sandbox_id=sandbox_id,
            checkpoint=checkpoint,
            image=f"{rec.image}:{rec.image_version}",
            taken_at=datetime.now(UTC),
            duration_s=round(time.monotonic() - start, 2),
            reused=reused,
            kinds=states,
        )
        for data in blobs:
            store.put(data)
        for part in parts:
            part.commit()
        for f in large:
            store.touch(f.sha256)  # named again: the janitor prunes by age
    finally:
        for part in parts:
            part.discard()  # nothing left once committed
    if remember:
        private_dir(_root(settings))
        private_dir(_dir(sandbox_id, settings))
        private_dir(_dir(sandbox_id, settings) / "memory")
    for name, text in remember.items():
        write_private(memories[name], text.encode("utf-8", errors="surrogateescape"))
    if checkpoint:
        save(cap, settings)
    if trusted:
        _save_index(cap, index[1] if index else {}, rec.image, rec.image_version, settings)
    return cap


def _check(
    outputs: dict[str, str], previous: dict[str, str | None], settings: FluidSettings
) -> tuple[dict[str, Any], dict[str, str], list[bytes], list[str], list[LargeContent]]:
    """Every kind's output completed, parsed and checked, nothing written: (states, outputs to
    remember, blob contents, kinds reused, files to stream in)."""
    remember: dict[str, str] = {}
    reused: list[str] = []
    states: dict[str, Any] = {}
    blobs: list[bytes] = []
    large: list[LargeContent] = []
    for name, k in kinds().items():
        if name not in outputs:
            raise GuestDataRefused(f"the {name} probe printed nothing")
        try:
            if name in previous:
                if outputs[name].strip() == UNCHANGED and previous[name] is not None:
                    outputs[name] = previous[name]  # type: ignore[assignment]
                    reused.append(name)
                else:
                    outputs[name] = remember[name] = k.complete(outputs[name], previous[name])
            state = k.parse(unwatched(outputs[name]))
        except _MALFORMED as e:
            raise GuestDataRefused(
                f"the {name} probe's output is malformed ({type(e).__name__}: {str(e)[:200]})"
            ) from e
        for data in k.take_blobs(state).values():
            if len(data) > settings.capture_max_content:
                raise GuestDataRefused(
                    f"the {name} probe sent a file of {len(data)} bytes, more than the "
                    f"{settings.capture_max_content} a capture keeps (FLUID_CAPTURE_MAX_CONTENT)"
                )
            if secret_reason(None, data) is None:  # private keys are never kept, whoever sent
                blobs.append(data)
        large.extend(k.take_large(state))
        states[name] = state
    return states, remember, blobs, reused, large


def _stream_large(
    g: GuestConnection, large: list[LargeContent], store: BlobStore, settings: FluidSettings
) -> list[Incoming]:
    """The content of each large file the store lacks, streamed into a private part, hashed
    and checked as it arrives: each read is bounded by the size the probe reported (itself
    within FLUID_CAPTURE_MAX_FILE), all of them by FLUID_CAPTURE_MAX_TOTAL, before a byte is
    read. Returns the checked parts for the caller to commit; on any failure none is left.

    A file over the per-file limit is not streamed: its change says so and is not exported.
    """
    wanted: dict[str, LargeContent] = {}
    for f in large:
        if f.size > settings.capture_max_file or f.sha256 in wanted:
            continue
        if not store.has(f.sha256):  # content stored before is not sent again
            wanted[f.sha256] = f
    total = sum(f.size for f in wanted.values())
    if total > settings.capture_max_total:
        raise GuestDataRefused(
            f"the guest has {len(wanted)} large files to send, {total} bytes in all, more than "
            f"the {settings.capture_max_total} one capture takes (raise "
            "FLUID_CAPTURE_MAX_TOTAL if the change is really that large)"
        )
    parts: list[Incoming] = []
    try:
        for f in wanted.values():
            part = store.incoming(f.sha256, f.path)
            parts.append(part)
            # One byte more than reported says the file grew since it was hashed.
            command = f"python3 -c {shlex.quote(SEND)} {os.fsencode(f.path).hex()} {f.size + 1}"
            timeout = STREAM_ALLOWANCE_S + f.size / STREAM_MIN_RATE
            got = g.stream(command, part.write, limit=f.size, timeout=timeout)
            if got.over or got.exit_status != 0:
                why = (
                    "it grew"
                    if got.over
                    else got.stderr.decode(errors="replace").strip()[-300:] or "no reason given"
                )
                raise GuestDataRefused(
                    f"the content of {f.path!r} could not be streamed from the guest ({why}): it "
                    "changed or went since the files probe hashed it; capture again once "
                    "nothing writes to it"
                )
            part.check()
    except BaseException:
        for part in parts:
            part.discard()
        raise
    return parts


def _tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of absolute guest paths (stored relative, to extract under /)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        staging = tarfile.TarInfo(STAGING.lstrip("/"))
        staging.type, staging.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(staging)
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _memory(kind: ResourceKind, sandbox_id: str, settings: FluidSettings) -> Path:
    # Per sandbox: a guest can only ever feed its own captures.
    return _dir(sandbox_id, settings) / "memory" / kind.memory_name()


def _previous(
    kind: ResourceKind, memory: Path, slot: str | None, settings: FluidSettings
) -> str | None:
    """The kind's output from this sandbox's previous capture, else from its warm slot's boot."""
    for path in (memory, warm_slots.memory(slot, kind, settings) if slot else None):
        if path is not None and path.exists():
            return path.read_text(encoding="utf-8", errors="surrogateescape")
    return None


def _split(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current = None
    names = set(kinds())
    for line in text.split("\n"):
        if line.startswith(MARK):
            current = line[len(MARK) :].strip()
            # A guest can print marks of its own: one more than the script's is a forgery.
            if current not in names or current in out:
                raise GuestDataRefused(f"the output repeats or invents the section {current!r}")
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def save(cap: Capture, settings: FluidSettings | None = None) -> Path:
    """Store a checkpoint's capture (gzip JSON under FLUID_HOME/captures/<sandbox>/, 0600)."""
    settings = settings or get_settings()
    private_dir(_root(settings))
    d = private_dir(_dir(cap.sandbox_id or "_", settings))
    path = d / f"{cap.checkpoint}.json.gz"
    return write_private(path, gzip.compress(_json(cap), compresslevel=3))


def _json(cap: Capture) -> bytes:
    try:
        return cap.model_dump_json().encode()
    except PydanticSerializationError:
        # A name that is not UTF-8 (kept by surrogateescape) is not valid JSON text for
        # pydantic; json's \udcXX escapes carry it and read back as the same string.
        return json.dumps(cap.model_dump(), default=_iso).encode()


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load(sandbox_id: str, checkpoint: str, settings: FluidSettings | None = None) -> Capture:
    """The capture stored with a checkpoint."""
    settings = settings or get_settings()
    path = _dir(sandbox_id, settings) / f"{checkpoint}.json.gz"
    if not path.exists():
        raise CaptureNotFound(
            f"no capture of {sandbox_id} at checkpoint {checkpoint!r}; captures are taken "
            "when a checkpoint is made (`fluid sandbox checkpoint`)"
        )
    text = gzip.decompress(path.read_bytes())
    try:
        cap = Capture.model_validate_json(text)
    except ValidationError:  # \udcXX escapes of a name that is not UTF-8 (see _json)
        cap = Capture.model_validate(json.loads(text))
    cap.kinds = {n: cap.state(n) for n in cap.kinds}
    return cap


def delete(sandbox_id: str, checkpoint: str, settings: FluidSettings | None = None) -> None:
    """Remove the capture of one checkpoint."""
    (_dir(sandbox_id, settings or get_settings()) / f"{checkpoint}.json.gz").unlink(missing_ok=True)


# --- the hash index --------------------------------------------------------------------------


def _index_dir(settings: FluidSettings) -> Path:
    return settings.cache_dir / "hash-index"


def index_path(image: str, version: str, settings: FluidSettings | None = None) -> Path:
    """Where the hash index of an image version is kept (it may not exist yet)."""
    return _index_dir(settings or get_settings()) / _index_name(image, version)


def _index_name(image: str, version: str) -> str:
    # Keyed by the probe too: a changed probe may record entries differently.
    from infra.state.kinds.files import probe_version

    return f"{image}-{version}-{probe_version()}.json.gz"


def _load_index(
    image: str, version: str, settings: FluidSettings
) -> tuple[bytes, dict[str, list[Any]]] | None:
    """Hashes of the image's files from trusted captures, gzipped as the probe reads it and
    parsed; None when there is none or it does not hold up (then captures hash every file)."""
    path = _index_dir(settings) / _index_name(image, version)
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    index = _valid_index(raw, settings.hash_index_max_entries)
    return (raw, index) if index is not None else None


def _valid_index(raw: bytes, max_entries: int) -> dict[str, list[Any]] | None:
    # The guest trusts every entry to skip hashing a file: the shape of each is checked.
    try:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = inflate.decompress(raw, 512 * (max_entries + 1))
        if inflate.unconsumed_tail or not inflate.eof:
            return None
        index = json.loads(text)
    except (zlib.error, ValueError):
        return None
    if not isinstance(index, dict) or len(index) > max_entries:
        return None
    for path, e in index.items():
        if not (
            path.startswith("/")
            and isinstance(e, list)
            and len(e) == 6
            and all(type(n) is int for n in e[:4])
            and valid_sha(e[4])
            and type(e[5]) is bool
        ):
            return None
    return index


def _save_index(
    cap: Capture, index: dict[str, list[Any]], image: str, version: str, settings: FluidSettings
) -> None:
    """Add a trusted capture's hashes to the image's index, up to its cap."""
    room = settings.hash_index_max_entries - len(index)
    added = False
    # Entries are keyed by stat data, so merging captures of different clones stays correct.
    for path, entry in cap.state("files").hash_index().items():
        if len(entry) != 6 or index.get(path) == entry:
            continue  # the usual case once the journal lists only changes: nothing to write
        if path not in index:
            if room <= 0:
                continue
            room -= 1
        index[path] = entry
        added = True
    if added:
        d = private_dir(_index_dir(settings))
        data = gzip.compress(json.dumps(index).encode(), compresslevel=3)
        write_private(d / _index_name(image, version), data)


# --- pruning (the janitor) -------------------------------------------------------------------


def prune(
    sandboxes_kept: set[str],
    image_versions: set[tuple[str, str]],
    *,
    grace_s: float,
    settings: FluidSettings | None = None,
) -> list[Pruned]:
    """Remove what nothing references, once older than `grace_s` (a capture under way writes
    its blobs before the capture that names them): capture directories of sandboxes not in
    `sandboxes_kept`, blobs no stored capture or memory names, and hash indexes of image
    versions not in `image_versions` (or of another probe version)."""
    settings = settings or get_settings()
    cutoff = time.time() - grace_s
    out = []
    count = size = 0
    root = _root(settings)
    if root.is_dir():
        for d in root.iterdir():
            if d.name in sandboxes_kept or d.lstat().st_mtime >= cutoff:
                continue
            size += _tree_size(d)
            count += 1
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)
    out.append(Pruned(what="capture directories", count=count, bytes=size))
    count, size = blob_store(settings).prune(_referenced(settings), older_than_s=grace_s)
    out.append(Pruned(what="blobs", count=count, bytes=size))
    keep = {_index_name(image, version) for image, version in image_versions}
    count = size = 0
    if _index_dir(settings).is_dir():
        for f in _index_dir(settings).iterdir():
            st = f.lstat()
            if f.name in keep or st.st_mtime >= cutoff:
                continue
            f.unlink(missing_ok=True)
            count, size = count + 1, size + st.st_size
    out.append(Pruned(what="hash-index files", count=count, bytes=size))
    return out


def _referenced(settings: FluidSettings) -> set[str]:
    """Every sha256 named by a stored capture or a memory (the files kind's memory holds the
    hashes of content sent with an earlier capture)."""
    found: set[str] = set()
    root = _root(settings)
    if not root.is_dir():
        return found
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error):
            continue
        found.update(h.decode() for h in _HASHES.findall(data))
    return found


def _tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())
