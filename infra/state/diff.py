"""Two captures → a ChangeSet, and the ChangeSet rendered for the UI, a terminal or JSON."""

from __future__ import annotations

from infra.settings import FluidSettings, get_settings
from infra.state import noise
from infra.state.base import Capture, Change, ChangeSet, DiffContext, kinds
from infra.state.capture import blob_store

SYMBOL = {"added": "+", "removed": "-", "modified": "~"}


def compare(
    before: Capture,
    after: Capture,
    *,
    ignore: tuple[str, ...] = (),
    settings: FluidSettings | None = None,
) -> ChangeSet:
    """What changed from `before` to `after`, per kind, noise left out."""
    settings = settings or get_settings()
    ctx = DiffContext(
        before=before,
        after=after,
        ignore=list(noise.ignore_patterns(ignore)),
        blobs=blob_store(settings),
    )
    changes: list[Change] = []
    for name, k in kinds().items():
        changes.extend(k.diff(before.state(name), after.state(name), ctx))
    return ChangeSet(
        sandbox_id=after.sandbox_id,
        image=after.image,
        from_checkpoint=before.checkpoint,
        to_checkpoint=after.checkpoint,
        changes=changes,
    )


def residual(expected: ChangeSet, actual: ChangeSet) -> list[Change]:
    """Changes in one set and not the other (an empty list: the replay reproduced it)."""
    want = {c.identity(): c for c in expected.changes}
    got = {c.identity(): c for c in actual.changes}
    missing = [
        c.model_copy(update={"note": "expected but not reproduced"})
        for k, c in want.items()
        if k not in got
    ]
    extra = [
        c.model_copy(update={"note": "not in the original change"})
        for k, c in got.items()
        if k not in want
    ]
    return missing + extra


def _title(cs: ChangeSet) -> str:
    where = cs.sandbox_id or "sandbox"
    span = f"{cs.from_checkpoint or '?'} → {cs.to_checkpoint or '?'}"
    return f"Changes in {where} ({span})"


def markdown(cs: ChangeSet, *, max_diff_lines: int = 80) -> str:
    """The change set as Markdown, for the Prefect UI."""
    lines = [f"# {_title(cs)}", ""]
    if cs.empty:
        return "\n".join(lines + ["No changes."])
    counts = ", ".join(f"{len(cs.of(k))} {k}" for k in kinds() if cs.of(k))
    lines += [f"**{len(cs.changes)} changes**: {counts}", ""]
    for name in kinds():
        group = cs.of(name)
        if not group:
            continue
        lines += [f"## {name.capitalize()}", "", "| | what | details |", "|---|---|---|"]
        for c in group:
            flag = "" if c.exported else " *(not exported)*"
            extra = "; ".join(c.details + ([c.note] if c.note else []))
            extra += " (binary)" if c.binary else ""
            lines.append(f"| {SYMBOL[c.action]} | `{c.key}`{flag} | {extra} |")
        lines.append("")
        for c in group:
            if c.text_diff:
                body = c.text_diff.splitlines()
                cut = len(body) - max_diff_lines
                body = body[:max_diff_lines] + ([f"... {cut} more lines"] if cut > 0 else [])
                lines += [f"`{c.key}`", "", "```diff", *body, "```", ""]
    return "\n".join(lines)


def terminal(cs: ChangeSet, *, color: bool = False) -> str:
    """The change set for a terminal."""
    paint = {"added": "\033[32m", "removed": "\033[31m", "modified": "\033[33m"}
    reset = "\033[0m" if color else ""
    out = [_title(cs)]
    if cs.empty:
        return out[0] + "\nno changes"
    for name in kinds():
        group = cs.of(name)
        if not group:
            continue
        out.append(f"\n{name}:")
        for c in group:
            start = paint[c.action] if color else ""
            note = "" if c.exported else "  [not exported]"
            details = f"  ({'; '.join(c.details)})" if c.details else ""
            out.append(
                f"  {start}{SYMBOL[c.action]} {c.key}{reset}{details}{note}"
                + (f"  # {c.note}" if c.note else "")
                + ("  [binary]" if c.binary else "")
            )
            if c.text_diff:
                out.extend("      " + ln for ln in c.text_diff.rstrip("\n").splitlines())
    return "\n".join(out)
