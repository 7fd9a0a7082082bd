"""Two captures → a ChangeSet, and the ChangeSet rendered for the UI, a terminal or JSON."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from deepdiff import DeepDiff

from infra.escaping import md_block, md_code, md_text, term_line, term_text, visible
from infra.settings import FluidSettings, get_settings
from infra.state import noise
from infra.state.base import (
    Capture,
    Change,
    ChangeSet,
    DiffContext,
    canonical,
    changed_keys,
    kinds,
)
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


def exclusions(cs: ChangeSet) -> list[Change]:
    """The changes the playbook leaves out and nothing in it brings: no replay reproduces them."""
    return [c for c in cs.changes if c.excluded]


Group = tuple[str, str, str]


def _groups(changes: Iterable[Change]) -> dict[Group, list[Change]]:
    out: dict[Group, list[Change]] = {}
    for c in changes:
        out.setdefault((c.kind, c.key, c.action), []).append(c)
    return out


def residual(
    expected: ChangeSet, actual: ChangeSet, *, accepted: Collection[str] = ()
) -> list[Change]:
    """Changes in one set and not the other (an empty list: the replay reproduced it).

    Every expected change counts, exported or not, except an exclusion whose key is in
    `accepted` (the run accepted that the playbook leaves it out). deepdiff finds the
    (kind, key, action) groups that differ; within one, changes match by their identity.
    """
    # Reported in each side's own order: the expected changes missing, then the extra ones.
    order = {id(c): i for i, c in enumerate([*expected.changes, *actual.changes])}
    want = _groups(c for c in expected.changes if not (c.excluded and c.key in accepted))
    got = _groups(actual.changes)
    found: list[tuple[int, Change]] = []
    for group in changed_keys(want, got, lambda cs: sorted(canonical(c.after) for c in cs)):
        mine, theirs = want.get(group, []), got.get(group, [])
        made = {c.identity() for c in theirs}
        meant = {c.identity() for c in mine}
        found += [
            (order[id(c)], c.model_copy(update={"note": _not_reproduced(c, theirs)}))
            for c in mine
            if c.identity() not in made
        ]
        found += [
            (order[id(c)], c.model_copy(update={"note": "not in the original change"}))
            for c in theirs
            if c.identity() not in meant
        ]
    return [c for _, c in sorted(found, key=lambda pair: pair[0])]


def _not_reproduced(c: Change, replayed: list[Change]) -> str:
    """Why an expected change is in the residual: absent from the replay, or made otherwise."""
    if c.excluded:
        return f"expected but not reproduced: {c.exclusion()}"
    if len(replayed) != 1 or c.after is None or replayed[0].after is None:
        return "expected but not reproduced"
    fields = DeepDiff(c.after, replayed[0].after).affected_root_keys
    return "expected but not reproduced: the replay made it with another " + ", ".join(
        str(f) for f in fields
    )


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
    lines += _exclusions_markdown(exclusions(cs))
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


# How a run accepts that its playbook leaves a change out (each one by its key).
ACCEPT_HOW = (
    "`fluid run … --accept-exclusion KEY` or `fluid verify DIR --accept-exclusion KEY` "
    "(the agent-task flow's `accept_exclusions`)"
)


def exclusions_table(excluded: list[Change]) -> list[str]:
    """Markdown table lines naming each change the playbook leaves out, and why."""
    return [
        "| kind | key | why |",
        "|---|---|---|",
        *(
            f"| {md_text(c.kind)} | {md_code(c.key, table=True)} | {md_text(c.exclusion())} |"
            for c in excluded
        ),
    ]


def _exclusions_markdown(excluded: list[Change]) -> list[str]:
    """The changes no replay reproduces, first and whole: a reviewer must see each one."""
    if not excluded:
        return []
    return [
        f"## Not reproduced: {len(excluded)} change(s) the playbook leaves out",
        "",
        "The proof fails unless the run accepts each of them by its key: " + ACCEPT_HOW + ".",
        "",
        *exclusions_table(excluded),
        "",
    ]


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
    excluded = exclusions(cs)
    if excluded:
        out.append(f"\nnot reproduced: {len(excluded)} change(s) the playbook leaves out")
        out += [
            f"  ! {term_line(c.kind)} {term_line(c.key)}  # {term_line(c.exclusion())}"
            for c in excluded[:limit]
        ]
        if limit is not None and len(excluded) > limit:
            out.append(f"  ... {len(excluded) - limit} more; all are in the whole change set")
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
