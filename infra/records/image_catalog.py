"""The cluster's image catalog and inventory, in the shared store.

The catalog holds each published image version under its global version (a content address)
with every part's size and sha256: what a copy on any host must match. The inventory says
which host holds a verified copy of which version, and since when. Publishing, copying and
verifying are infra/host/image_sync.py's; this module only keeps the records.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from infra.host.images import ImagePart
from infra.records import store
from infra.records.store import ImageCopyRecord, ImagePartRecord, ImageRecord, utcnow
from infra.settings import FluidSettings


class CatalogImage(BaseModel):
    """A published image version as every host sees it."""

    name: str
    version: str
    origin_version: str
    published_by: str
    published_at: datetime
    parts: list[ImagePart]
    manifest: dict[str, Any]


class HeldImage(BaseModel):
    """One host's verified copy of a published image version."""

    host: str
    name: str
    version: str
    verified_at: datetime


def _entry(rec: ImageRecord, parts: list[ImagePartRecord]) -> CatalogImage:
    return CatalogImage(
        name=rec.name,
        version=rec.version,
        origin_version=rec.origin_version,
        published_by=rec.published_by,
        published_at=rec.published_at,
        parts=[ImagePart(file=p.file, size_bytes=p.size_bytes, sha256=p.sha256) for p in parts],
        manifest=json.loads(rec.manifest),
    )


def _parts(s: Any, name: str, version: str) -> list[ImagePartRecord]:
    return list(
        s.exec(
            select(ImagePartRecord)
            .where(col(ImagePartRecord.name) == name, col(ImagePartRecord.version) == version)
            .order_by(col(ImagePartRecord.file))
        )
    )


def add(entry: CatalogImage, settings: FluidSettings | None = None) -> CatalogImage:
    """Record `entry` unless its (name, version) is there; the catalog's entry either way
    (the first publisher of a content address stays its publisher)."""
    if (found := get(entry.name, entry.version, settings)) is not None:
        return found
    try:
        with store.session(settings) as s:
            s.add(
                ImageRecord(
                    name=entry.name,
                    version=entry.version,
                    origin_version=entry.origin_version,
                    published_by=entry.published_by,
                    published_at=entry.published_at,
                    manifest=json.dumps(entry.manifest, sort_keys=True),
                )
            )
            for p in entry.parts:
                s.add(
                    ImagePartRecord(
                        name=entry.name,
                        version=entry.version,
                        file=p.file,
                        size_bytes=p.size_bytes,
                        sha256=p.sha256,
                    )
                )
    except IntegrityError:
        pass  # another host published the same content at the same moment: its entry stands
    found = get(entry.name, entry.version, settings)
    assert found is not None
    return found


def get(name: str, version: str, settings: FluidSettings | None = None) -> CatalogImage | None:
    """The catalog's entry for image `name` at global version `version`, or None."""
    with store.session(settings) as s:
        rec = s.get(ImageRecord, (name, version))
        return None if rec is None else _entry(rec, _parts(s, name, version))


def entries(name: str | None = None, settings: FluidSettings | None = None) -> list[CatalogImage]:
    """Every published version (of `name`, if given), oldest first."""
    with store.session(settings) as s:
        query = select(ImageRecord).order_by(col(ImageRecord.published_at))
        if name is not None:
            query = query.where(col(ImageRecord.name) == name)
        return [_entry(r, _parts(s, r.name, r.version)) for r in s.exec(query)]


def newest(name: str, settings: FluidSettings | None = None) -> CatalogImage | None:
    """The version of `name` published last, or None."""
    found = entries(name, settings)
    return found[-1] if found else None


def mark_held(host: str, name: str, version: str, settings: FluidSettings | None = None) -> None:
    """Record that `host` holds a copy of (`name`, `version`) it verified just now."""
    # Two processes of one host recording at once: the loser's insert fails, and its second
    # try finds the row and updates it.
    for last in (False, True):
        try:
            with store.session(settings) as s:
                rec = s.get(ImageCopyRecord, (host, name, version))
                if rec is None:
                    rec = ImageCopyRecord(host_id=host, name=name, version=version)
                rec.verified_at = utcnow()
                s.add(rec)
            return
        except IntegrityError:
            if last:
                raise


def forget_held(host: str, name: str, version: str, settings: FluidSettings | None = None) -> None:
    """Record that `host` no longer holds a usable copy of (`name`, `version`)."""
    with store.session(settings) as s:
        rec = s.get(ImageCopyRecord, (host, name, version))
        if rec is not None:
            s.delete(rec)


def held(
    *,
    host: str | None = None,
    name: str | None = None,
    version: str | None = None,
    settings: FluidSettings | None = None,
) -> list[HeldImage]:
    """The inventory: verified copies, by host, name and version (each filter optional)."""
    query = select(ImageCopyRecord).order_by(
        col(ImageCopyRecord.host_id), col(ImageCopyRecord.name), col(ImageCopyRecord.version)
    )
    for column, value in (
        (ImageCopyRecord.host_id, host),
        (ImageCopyRecord.name, name),
        (ImageCopyRecord.version, version),
    ):
        if value is not None:
            query = query.where(col(column) == value)
    with store.session(settings) as s:
        return [
            HeldImage(host=r.host_id, name=r.name, version=r.version, verified_at=r.verified_at)
            for r in s.exec(query)
        ]


def holders(name: str, version: str, settings: FluidSettings | None = None) -> list[str]:
    """The hosts that hold a verified copy of (`name`, `version`): where it can run at once."""
    return [h.host for h in held(name=name, version=version, settings=settings)]
