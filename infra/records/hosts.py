"""The hosts table: fluid's hypervisor hosts, their work queues, states and capacity, and the
query scope that keeps each host's sweeps, takes and listings to its own records.

A host registers itself when its worker starts (`fluid worker start`) or by `fluid host add`;
one host alone needs neither: its records carry its id all the same.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, or_
from sqlmodel import col, select

from infra.errors import HostNotFound
from infra.host.identity import check, host_id
from infra.records import store
from infra.records.store import (
    FINAL_RUN_STATUSES,
    AgentRunRecord,
    HostRecord,
    SandboxRecord,
    utcnow,
)
from infra.settings import FluidSettings, get_settings

HostState = Literal["ready", "draining", "down"]
QUEUE_PREFIX = "host-"


class Host(BaseModel):
    """A host as `fluid host list` shows it."""

    id: str
    work_queue: str
    state: HostState
    max_sandboxes: int
    labels: dict[str, str] = Field(default_factory=dict)
    domain_type: str | None = None
    last_heartbeat: datetime | None = None
    state_message: str = ""

    @classmethod
    def of(cls, rec: HostRecord) -> Host:
        """The model of one table row."""
        return cls(
            id=rec.id,
            work_queue=rec.work_queue,
            state=rec.state,  # type: ignore[arg-type]
            max_sandboxes=rec.max_sandboxes,
            labels=json.loads(rec.labels or "{}"),
            domain_type=rec.domain_type,
            last_heartbeat=rec.last_heartbeat,
            state_message=rec.state_message,
        )


def not_found(host: str) -> HostNotFound:
    """The error for a host id no row has."""
    return HostNotFound(f"no host {host!r} is registered; `fluid host list` shows them")


def work_queue(host: str) -> str:
    """The Prefect work queue (in fluid's pool) whose runs only this host's worker takes."""
    return QUEUE_PREFIX + check(host)


def add(
    host: str,
    *,
    max_sandboxes: int | None = None,
    labels: dict[str, str] | None = None,
    domain_type: str | None = None,
    settings: FluidSettings | None = None,
) -> Host:
    """Register `host`, or update the fields given; a host that was down or draining stays so."""
    settings = settings or get_settings()
    check(host)
    with store.session(settings) as s:
        rec = s.get(HostRecord, host)
        if rec is None:
            rec = HostRecord(
                id=host,
                work_queue=work_queue(host),
                max_sandboxes=max_sandboxes or settings.max_sandboxes,
            )
        elif max_sandboxes is not None:
            rec.max_sandboxes = max_sandboxes
        if labels is not None:
            rec.labels = json.dumps(dict(sorted(labels.items())))
        if domain_type is not None:
            rec.domain_type = domain_type
        s.add(rec)
        s.flush()
        return Host.of(rec)


def get(host: str, settings: FluidSettings | None = None) -> Host:
    """One registered host; HostNotFound when it is not."""
    with store.session(settings) as s:
        rec = s.get(HostRecord, host)
    if rec is None:
        raise not_found(host)
    return Host.of(rec)


def list_hosts(settings: FluidSettings | None = None) -> list[Host]:
    """Every registered host, by id."""
    with store.session(settings) as s:
        return [Host.of(r) for r in s.exec(select(HostRecord).order_by(col(HostRecord.id)))]


def sandbox_counts(settings: FluidSettings | None = None) -> dict[str, int]:
    """Sandboxes on each host now, by host id (those marked lost are gone with their host).

    Records from before fluid knew hosts count for this host: one host was all there was.
    """
    settings = settings or get_settings()
    me = host_id(settings)
    counts: dict[str, int] = {}
    with store.session(settings) as s:
        rows = s.exec(
            select(SandboxRecord.host_id, func.count())
            .where(col(SandboxRecord.lost).is_(None))
            .group_by(col(SandboxRecord.host_id))
        )
        for host, n in rows:
            counts[host or me] = counts.get(host or me, 0) + n
    return counts


def set_state(
    host: str, state: HostState, message: str = "", settings: FluidSettings | None = None
) -> Host:
    """Mark a host ready, draining (no new work placed) or down; HostNotFound if unknown."""
    with store.session(settings) as s:
        rec = s.get(HostRecord, host)
        if rec is None:
            raise not_found(host)
        rec.state = state
        rec.state_message = message
        s.add(rec)
        s.flush()
        return Host.of(rec)


def heartbeat(host: str, at: datetime | None = None, settings: FluidSettings | None = None) -> None:
    """Record when `host` was last heard from (its worker's heartbeat; default: now)."""
    with store.session(settings) as s:
        rec = s.get(HostRecord, host)
        if rec is not None:
            rec.last_heartbeat = at or utcnow()
            s.add(rec)


class HostDown(BaseModel):
    """What marking a host down touched: its sandboxes (now lost) and its unfinished runs."""

    host: str
    was: HostState
    lost_sandboxes: list[str] = Field(default_factory=list)
    open_runs: list[str] = Field(default_factory=list)


def mark_down(host: str, message: str, settings: FluidSettings | None = None) -> HostDown:
    """Mark `host` down and its sandboxes lost; the runs it had not finished, for the caller to
    end (their flow runs are Prefect's). Only `host`'s own rows are touched."""
    settings = settings or get_settings()
    with store.session(settings) as s:
        rec = s.get(HostRecord, host)
        if rec is None:
            raise not_found(host)
        down = HostDown(host=host, was=rec.state)  # type: ignore[arg-type]
        rec.state, rec.state_message = "down", message
        s.add(rec)
        for box in s.exec(
            select(SandboxRecord).where(
                col(SandboxRecord.host_id) == host, col(SandboxRecord.lost).is_(None)
            )
        ):
            box.lost = message
            s.add(box)
            down.lost_sandboxes.append(box.id)
        down.open_runs = [
            r.flow_run_id
            for r in s.exec(
                select(AgentRunRecord).where(
                    col(AgentRunRecord.host_id) == host,
                    col(AgentRunRecord.status).not_in(FINAL_RUN_STATUSES),
                )
            )
        ]
    return down


def on_this_host(model: Any, settings: FluidSettings | None = None) -> Any:
    """A WHERE clause for `model`'s rows that belong to this host (or predate hosts)."""
    column = col(model.host_id)
    return or_(column == host_id(settings), column.is_(None))
