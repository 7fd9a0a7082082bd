"""Two captures → a ChangeSet, and the ChangeSet rendered for the UI, a terminal or JSON."""

from __future__ import annotations

from infra.escaping import md_block, md_code, md_text, term_line, term_text, visible
from infra.settings import FluidSettings, get_settings
from infra.state import noise
from infra.state.base import Capture, Change, ChangeSet, DiffContext, kinds
from infra.state.capture import blob_store
from infra.state.playbook_yaml import hold_back

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
        # A change a playbook cannot carry byte for byte (a name that is not UTF-8) is marked
        # not exported here, so the reviewer sees it held back.
        changes.extend(hold_back(c) for c in k.diff(before.state(name), after.state(name), ctx))
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


def markdown(cs: ChangeSet, *, max_diff_lines: int = 80, whole: str | None = None) -> str:
    """The change set as Markdown, for the Prefect UI; every guest string escaped.

    `whole` says where the whole change set is (a file or a command, shown as code) for the
    text diffs cut at `max_diff_lines`.
    """
    lines = [f"# {md_text(_title(cs))}", ""]
    if cs.empty:
        return "\n".join(lines + ["No changes."])
    where = md_code(whole or _json_command(cs))
    counts = ", ".join(f"{len(cs.of(k))} {k}" for k in kinds() if cs.of(k))
    lines += [f"**{len(cs.changes)} changes**: {counts}", ""]
    for name in kinds():
        group = cs.of(name)
        if not group:
            continue
        lines += [f"## {name.capitalize()}", "", "| | what | details |", "|---|---|---|"]
        for c in group:
            flag = "" if c.exported else " *(not exported)*"
            extra = "; ".join(md_text(x) for x in c.details + ([c.note] if c.note else []))
            extra += " (binary)" if c.binary else ""
            lines.append(f"| {SYMBOL[c.action]} | {md_code(c.key, table=True)}{flag} | {extra} |")
        lines.append("")
        for c in group:
            if c.text_diff:
                body = _diff_lines(c)
                cut = len(body) - max_diff_lines
                lines += [md_code(c.key), "", md_block("\n".join(body[:max_diff_lines]), "diff")]
                if cut > 0:
                    lines += [
                        "",
                        f"*{cut} more lines of this diff not shown; the whole change set is in "
                        f"{where}.*",
                    ]
                lines.append("")
    return "\n".join(lines)


def _diff_lines(c: Change) -> list[str]:
    """A change's text diff as lines; its name, where the diff's header repeats it, with every
    control shown, so a newline in a file name cannot add a line of its own."""
    text = c.text_diff or ""
    if visible(c.key) != c.key:
        text = text.replace(c.key, visible(c.key))
    return text.rstrip("\n").split("\n")


def _json_command(cs: ChangeSet) -> str:
    return (
        f"fluid diff {cs.sandbox_id or 'SANDBOX'} --from {cs.from_checkpoint or 'A'} "
        f"--to {cs.to_checkpoint or 'B'} --json"
    )


def terminal(
    cs: ChangeSet,
    *,
    color: bool = False,
    diffs: bool = True,
    limit: int | None = None,
    whole: str | None = None,
) -> str:
    """The change set for a terminal; no guest string can send the terminal a control.

    `diffs=False` leaves text diffs out; `limit` lists at most that many changes and says how
    many more there are and where the whole change set is (`whole`).
    """
    paint = {"added": "\033[32m", "removed": "\033[31m", "modified": "\033[33m"}
    reset = "\033[0m" if color else ""
    out = [term_line(_title(cs))]
    if cs.empty:
        return out[0] + "\nno changes"
    shown = 0
    for name in kinds():
        group = cs.of(name)
        if limit is not None:
            group = group[: max(0, limit - shown)]
        if not group:
            continue
        shown += len(group)
        out.append(f"\n{name}:")
        for c in group:
            start = paint[c.action] if color else ""
            note = "" if c.exported else "  [not exported]"
            details = f"  ({term_line('; '.join(c.details))})" if c.details else ""
            out.append(
                f"  {start}{SYMBOL[c.action]} {term_line(c.key)}{reset}{details}{note}"
                + (f"  # {term_line(c.note)}" if c.note else "")
                + ("  [binary]" if c.binary else "")
            )
            if c.text_diff and diffs:
                out.extend("      " + term_text(ln) for ln in _diff_lines(c))
    if shown < len(cs.changes):
        out.append(
            f"\n... {len(cs.changes) - shown} more changes not shown; the whole change set is "
            f"in {term_line(whole or _json_command(cs))}"
        )
    return "\n".join(out)
