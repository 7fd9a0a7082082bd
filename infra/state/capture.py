"""Take a capture of a running sandbox in one SSH round trip, and keep captures on disk."""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra import sandboxes, warm_slots
from infra.errors import FluidError
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
from infra.state.blobs import BlobStore

MARK = "@@fluid-kind "


class CaptureNotFound(FluidError):
    """No capture was stored for that sandbox and checkpoint."""


def blob_store(settings: FluidSettings | None = None) -> BlobStore:
    """Where captured file contents are kept."""
    return BlobStore((settings or get_settings()).storage_dir / "blobs")


def _dir(sandbox_id: str, settings: FluidSettings) -> Path:
    return settings.home / "captures" / sandbox_id


def capture(
    sandbox_id: str, *, checkpoint: str | None = None, settings: FluidSettings | None = None
) -> Capture:
    """Capture every resource kind of a running sandbox; file contents go to the blob store."""
    settings = settings or get_settings()
    start = time.monotonic()
    rec = sandboxes._record(sandbox_id, settings)
    memories = {
        k.name: _memory(k, sandbox_id, settings) for k in kinds().values() if k.remembered()
    }
    previous = {
        name: _previous(kinds()[name], path, rec.slot, settings) for name, path in memories.items()
    }
    params: dict[str, Any] = {
        # Read once: the files kind sends it, and _save_index merges this capture's hashes in.
        "index": _stored_index(rec.image, rec.image_version, settings),
        "previous": previous,
    }
    uploads = {path: data for k in kinds().values() for path, data in k.uploads(params).items()}
    # The uploads travel as a tar on the command's stdin: an SFTP session costs ~0.3 s more.
    # The tar makes STAGING itself (0700); one stat then serves every kind that watches files.
    script = ["tar -xf - -C / || exit 1", watch_script(list(kinds().values()))]
    for k in kinds().values():
        script.append(f"echo '{MARK}{k.name}'\n{{\n{k.script(params)}\n}} 2>/dev/null")
    script.append(f"rm -rf {STAGING}")
    with sandboxes.guest(sandbox_id, settings) as g:
        r = g.run("\n".join(script), timeout=900, output_cap=1 << 31, stdin=_tar(uploads))
    if r.exit_status != 0 and not r.stdout:
        raise FluidError(f"capture of {sandbox_id} failed: {r.stderr_text[-2000:]}")
    outputs = _split(r.stdout.decode("utf-8", errors="surrogateescape"))
    reused = []
    for name, path in memories.items():
        if name not in outputs:
            continue
        if outputs[name].strip() == UNCHANGED and previous[name] is not None:
            outputs[name] = previous[name]
            reused.append(name)
        else:
            outputs[name] = kinds()[name].complete(outputs[name], previous[name])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(outputs[name], encoding="utf-8", errors="surrogateescape")
    blobs = blob_store(settings)
    states = {}
    for name, k in kinds().items():
        if name not in outputs:
            raise FluidError(f"capture of {sandbox_id}: the {name} probe printed nothing")
        state = k.parse(unwatched(outputs[name]))
        for data in k.take_blobs(state).values():
            blobs.put(data)
        states[name] = state
    cap = Capture(
        sandbox_id=sandbox_id,
        checkpoint=checkpoint,
        image=f"{rec.image}:{rec.image_version}",
        taken_at=datetime.now(UTC),
        duration_s=round(time.monotonic() - start, 2),
        reused=reused,
        kinds=states,
    )
    if checkpoint:
        save(cap, settings)
    _save_index(cap, params["index"], rec.image, rec.image_version, settings)
    return cap


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
    for line in text.split("\n"):
        if line.startswith(MARK):
            current = line[len(MARK) :].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def save(cap: Capture, settings: FluidSettings | None = None) -> Path:
    """Store a checkpoint's capture (gzip JSON under FLUID_HOME/captures/<sandbox>/)."""
    settings = settings or get_settings()
    d = _dir(cap.sandbox_id or "_", settings)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{cap.checkpoint}.json.gz"
    path.write_bytes(gzip.compress(cap.model_dump_json().encode(), compresslevel=3))
    return path


def load(sandbox_id: str, checkpoint: str, settings: FluidSettings | None = None) -> Capture:
    """The capture stored with a checkpoint."""
    settings = settings or get_settings()
    path = _dir(sandbox_id, settings) / f"{checkpoint}.json.gz"
    if not path.exists():
        raise CaptureNotFound(
            f"no capture of {sandbox_id} at checkpoint {checkpoint!r}; captures are taken "
            "when a checkpoint is made (`fluid sandbox checkpoint`)"
        )
    cap = Capture.model_validate_json(gzip.decompress(path.read_bytes()))
    cap.kinds = {n: cap.state(n) for n in cap.kinds}
    return cap


def _index_path(image: str, version: str, settings: FluidSettings) -> Path:
    # Keyed by the probe too: a changed probe may record entries differently.
    from infra.state.kinds.files import probe_version

    return settings.cache_dir / "hash-index" / f"{image}-{version}-{probe_version()}.json.gz"


def delete_all(sandbox_id: str, settings: FluidSettings | None = None) -> None:
    """Remove every capture of a sandbox (when it is destroyed)."""
    import shutil

    shutil.rmtree(_dir(sandbox_id, settings or get_settings()), ignore_errors=True)


def delete(sandbox_id: str, checkpoint: str, settings: FluidSettings | None = None) -> None:
    """Remove the capture of one checkpoint."""
    (_dir(sandbox_id, settings or get_settings()) / f"{checkpoint}.json.gz").unlink(missing_ok=True)


def _stored_index(image: str, version: str, settings: FluidSettings) -> bytes | None:
    """Hashes from earlier captures of the same image (gzipped JSON, as the probe reads it),
    so unchanged files are not re-read."""
    path = _index_path(image, version, settings)
    return path.read_bytes() if path.exists() else None


def _save_index(
    cap: Capture, stored: bytes | None, image: str, version: str, settings: FluidSettings
) -> None:
    import json

    path = _index_path(image, version, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    index = json.loads(gzip.decompress(stored)) if stored else {}
    # Entries are keyed by stat data, so merging captures of different clones stays correct.
    new = cap.state("files").hash_index()
    if all(index.get(path) == entry for path, entry in new.items()):
        return  # the usual case once the journal lists only changes: nothing to write
    index.update(new)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(json.dumps(index).encode(), compresslevel=3))
    tmp.replace(path)
