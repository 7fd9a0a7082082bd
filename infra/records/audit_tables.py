"""The decisions and applies tables held to the audit chain, field for field.

`runs.decide` and `runs.record_apply` write a row and append a record ("approval", "apply")
whose detail holds the row as stored. A row that differs from its record, has none, or whose
record has no row was changed, added or deleted outside fluid.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlmodel import Session, select

from infra.records.store import ApplyRecord, AuditRecord, DecisionRecord


def _detail(rec: AuditRecord) -> dict[str, Any]:
    # An edited record may hold anything: its problem is reported by the chain check.
    try:
        detail = json.loads(rec.detail)
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}


def _differences(row: Any, fields: tuple[str, ...], logged: dict[str, Any]) -> str:
    """The fields a table row and its audit record disagree on, in `fields` order."""
    values = {name: getattr(row, name) for name in fields}
    return ", ".join(
        f"{name} is {values[name]!r} in the table but {logged.get(name)!r} in the record"
        for name in fields
        if name in logged and values[name] != logged[name]
    )


def check_decisions(s: Session, approvals: list[AuditRecord]) -> list[str]:
    """Each decisions row against the newest approval record of its run and attempt."""
    newest: dict[tuple[str | None, int], AuditRecord] = {}
    for rec in approvals:
        newest[(rec.run_id, _detail(rec).get("attempt"))] = rec
    problems = []
    rows = s.exec(select(DecisionRecord).order_by(DecisionRecord.id)).all()
    for row in rows:
        what = f"decisions row {row.id} (run {row.flow_run_id}, attempt {row.attempt})"
        rec = newest.pop((row.flow_run_id, row.attempt), None)
        if rec is None:
            problems.append(f"{what} has no approval record in the audit trail")
            continue
        fields = ("outcome", "approver", "automatic", "comment", "digest")
        diff = _differences(row, fields, _detail(rec))
        if diff:
            problems.append(f"{what} differs from audit record {rec.seq}: {diff}")
    for (run, attempt), rec in sorted(newest.items(), key=lambda kv: kv[1].seq):
        problems.append(
            f"audit record {rec.seq} (approval of run {run}, attempt {attempt}) has no "
            "decisions row: the row was deleted"
        )
    return problems


def check_applies(s: Session, applies: list[AuditRecord]) -> list[str]:
    """Each applies row against its host's entry in an apply record of its run, in order."""
    logged: dict[tuple[str | None, str], list[tuple[int, dict]]] = defaultdict(list)
    for rec in applies:
        detail = _detail(rec)
        hosts = detail.get("hosts")
        for host, counts in (hosts if isinstance(hosts, dict) else {}).items():
            entry = dict(counts if isinstance(counts, dict) else {}, digest=detail.get("digest"))
            logged[(rec.run_id, host)].append((rec.seq, entry))
    problems = []
    for row in s.exec(select(ApplyRecord).order_by(ApplyRecord.id)).all():
        what = f"applies row {row.id} (run {row.flow_run_id}, host {row.host})"
        entries_ = logged.get((row.flow_run_id, row.host))
        if not entries_:
            problems.append(f"{what} has no apply record in the audit trail")
            continue
        seq, entry = entries_.pop(0)
        fields = ("digest", "ok", "changed", "failed", "unreachable")
        diff = _differences(row, fields, entry)
        if diff:
            problems.append(f"{what} differs from audit record {seq}: {diff}")
    for (run, host), left in sorted(logged.items(), key=lambda kv: str(kv[0])):
        for seq, _entry in left:
            problems.append(
                f"audit record {seq} (apply of run {run} on {host}) has no applies row: "
                "the row was deleted"
            )
    return problems
