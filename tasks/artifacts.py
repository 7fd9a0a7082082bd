"""The Markdown of the agent-task run's artifacts in the Prefect UI: the sealed playbook, the
replay's verification, the check-mode preview on production and the audit trail.

Everything but fluid's own words is escaped (infra/escaping.py), and a view cut short says
how much it leaves out and where the whole is.
"""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from infra.ansible.playbook_runs import PlaybookRun
from infra.ansible.verification import VerificationReport
from infra.escaping import md_block, md_code, md_text
from infra.records import audit
from infra.state.base import Change, ChangeSet
from infra.state.diff import ACCEPT_HOW, exclusions_table, markdown

# Text files of a playbook shown inline in its artifact; larger ones are only listed.
ARTIFACT_FILE_LIMIT = 20_000
# The end of ansible-playbook's output shown in the preview artifact.
PREVIEW_TAIL = 5000
# Audit records shown in the audit artifact, and characters of each record's summary.
AUDIT_RECORDS, AUDIT_SUMMARY = 200, 150
# The end of a failed replay's error shown in the verification artifact.
ERROR_TAIL = 3000


def playbook_markdown(directory: Path, dig: str, attempt: int) -> str:
    """The sealed playbook of `attempt` and its digest: each text file inline up to
    ARTIFACT_FILE_LIMIT, larger or binary ones only named with where they are."""
    lines = [
        f"# Playbook (attempt {attempt})",
        "",
        f"Digest: {md_code(dig)}",
        "",
        f"The reviewed copy (read-only, applied as it is): {md_code(str(directory))}",
        "",
    ]
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel in ("DIGEST", "changeset.json"):
            continue
        # Only the start is read: a captured file in files/ may be gigabytes.
        size = path.stat().st_size
        with path.open("rb") as f:
            data = f.read(ARTIFACT_FILE_LIMIT + 1)
        heading = f"## {md_text(rel)}"
        if len(data) > ARTIFACT_FILE_LIMIT or b"\0" in data:
            what = "binary" if b"\0" in data else "over 20 KB"
            lines += [
                heading,
                "",
                f"*{size} bytes ({what}), not shown; the whole file is in {md_code(str(path))}.*",
                "",
            ]
            continue
        lang = "yaml" if rel.endswith((".yml", ".yaml")) else ""
        lines += [heading, "", md_block(data.decode(errors="replace").rstrip(), lang), ""]
    return "\n".join(lines)


def _exclusion_rows(title: str, changes: list[Change]) -> list[str]:
    return [f"## {title}: {len(changes)}", "", *exclusions_table(changes), ""] if changes else []


def verification_markdown(report: VerificationReport, whole: str | None = None) -> str:
    """A replay's verdict, the changes it does not reproduce (first: not accepted, then
    accepted by name), its step timings and any residual difference, as Markdown; `whole`
    says where the whole report is (a file), for the error shown cut."""
    verdict = report.summary()
    if report.excluded:
        verdict = (
            f"FAILED: {len(report.excluded)} change(s) the playbook leaves out are not "
            "accepted; no replay was booted"
        )
    lines = [
        f"# Verification: {md_text(verdict)}",
        "",
        *_exclusion_rows("Not reproduced and not accepted (the proof fails)", report.excluded),
        *([f"Accept each by its key: {ACCEPT_HOW}.", ""] if report.excluded else []),
        *_exclusion_rows("Not reproduced, accepted by this run", report.accepted),
        *(
            [
                "Accepted keys that name no change left out (ignored): "
                + ", ".join(md_code(k) for k in report.unmatched),
                "",
            ]
            if report.unmatched
            else []
        ),
        "| step | seconds |",
        "|---|---|",
        *(f"| {md_text(k)} | {v:.1f} |" for k, v in report.timings.items()),
    ]
    # The whole report: the file named, else what `fluid verify DIR --json` prints.
    where = whole or "fluid verify DIR --json"
    if report.residual:
        residual = ChangeSet(changes=report.residual)
        lines += ["", "Residual difference:", "", markdown(residual, whole=where)]
    if report.error and not report.excluded:
        tail = report.error[-ERROR_TAIL:]
        lines += ["", md_block(tail)]
        if len(report.error) > len(tail):
            lines += [
                "",
                f"*The first {len(report.error) - len(tail)} characters of the error are not "
                f"shown; the whole report is in {md_code(where)}.*",
            ]
    return "\n".join(lines)


def hosts_table(run: PlaybookRun) -> list[dict[str, object]]:
    """A playbook run's task counts, a row per host."""
    hosts = sorted(set(run.ok) | set(run.changed) | set(run.failures) | set(run.unreachable))
    return [
        {
            "host": h,
            "ok": run.ok.get(h, 0),
            "changed": run.changed.get(h, 0),
            "failed": run.failures.get(h, 0),
            "unreachable": run.unreachable.get(h, 0),
        }
        for h in hosts
    ]


def output_tail(run: PlaybookRun, output_file: Path, limit: int) -> list[str]:
    """The end of a playbook run's output as Markdown, saying how much is cut and where the
    whole output is."""
    tail = run.output_tail[-limit:]
    cut = max(run.output_chars, len(run.output_tail)) - len(tail)
    lines = [md_block(tail)]
    if cut > 0:
        lines += [
            "",
            f"*The first {cut} characters of the output are not shown; the whole output is in "
            f"{md_code(str(output_file))}.*",
        ]
    return lines


# What a task result means in a check-mode preview.
PREVIEW_LABELS = {
    "changed": "would change",
    "ok": "no change",
    "ignored": "unknown until applied",
    "skipped": "skipped",
    "failed": "failed",
    "unreachable": "unreachable",
}
# Task results listed in the preview artifact; the rest are counted and pointed to.
PREVIEW_ROWS = 200


def preview_counts(run: PlaybookRun) -> dict[str, int]:
    """How many task results (per task and host) the preview has of each kind, by label."""
    counts = dict.fromkeys(PREVIEW_LABELS.values(), 0)
    for t in run.tasks:
        counts[PREVIEW_LABELS[t.status]] += 1
    return counts


def preview_verdict(run: PlaybookRun) -> str:
    """The preview in one line: its counts, and whether anything failed."""
    counts = preview_counts(run)
    shown = ", ".join(f"{n} {label}" for label, n in counts.items() if n)
    if not run.succeeded:
        return f"with errors ({shown or 'no task ran'})"
    if counts["unknown until applied"]:
        return f"with errors in check mode only ({shown})"
    return f"clean ({shown or 'no tasks'})"


def preview_markdown(run: PlaybookRun, production: str, *, output: Path, whole: Path) -> str:
    """The check-mode preview for the reviewer: a line per task and host (cut at PREVIEW_ROWS
    saying how many more and where the whole is), then the end of ansible's output."""
    counts = preview_counts(run)
    rows = run.tasks[:PREVIEW_ROWS]
    more = run.tasks_total - len(rows)
    md = [
        f"# Check-mode preview on {md_text(production)}: {md_text(preview_verdict(run))}",
        "",
        "Per task and host: "
        + ", ".join(
            f"**{n}** {label}"
            for label, n in counts.items()
            if n or label in ("would change", "no change", "unknown until applied")
        )
        + ". *Unknown until applied*: the task failed in check mode, most often because it "
        "needs an earlier change that check mode only pretends to make; the real apply stops "
        "at a task that fails.",
        "",
        "| # | task | host | in check mode | message |",
        "|---|---|---|---|---|",
        *(
            f"| {i} | {md_code(t.task, table=True)} | {md_text(t.host)} | "
            f"{PREVIEW_LABELS[t.status]} | {md_text(t.message)} |"
            for i, t in enumerate(rows, 1)
        ),
    ]
    if more > 0:
        md += [
            "",
            f"*{more} more task results not shown; the whole preview is in {md_code(str(whole))} "
            f"and ansible's whole output in {md_code(str(output))}.*",
        ]
    md += [
        "",
        "| host | ok | changed | failed | unreachable |",
        "|---|---|---|---|---|",
        *(
            f"| {md_text(str(r['host']))} | {r['ok']} | {r['changed']} | {r['failed']} | "
            f"{r['unreachable']} |"
            for r in hosts_table(run)
        ),
        "",
        *output_tail(run, output, PREVIEW_TAIL),
    ]
    return "\n".join(md)


def _cell(text: str) -> str:
    cut = len(text) - AUDIT_SUMMARY
    return md_text(text[:AUDIT_SUMMARY]) + (f" *… {cut} more characters*" if cut > 0 else "")


def publish_audit_trail(run_id: str, sandbox_id: str, when: str) -> None:
    """The run's audit records so far and the chain's head hash, as an artifact."""
    records = [r for r in audit.entries(run_id) if r.sandbox_id in (None, sandbox_id)]
    head = audit.head()
    earlier = len(records) - AUDIT_RECORDS
    lines = [
        f"# Audit trail ({md_text(when)})",
        "",
        f"Chain head: {md_code(str(head))} — check it later with "
        f"{md_code(f'fluid audit verify --head {head}')}.",
        "",
        *(
            [
                f"*{earlier} earlier records not shown; all of them: "
                f"{md_code(f'fluid audit {run_id}')}.*",
                "",
            ]
            if earlier > 0
            else []
        ),
        "| # | time | kind | actor | what |",
        "|---|---|---|---|---|",
        *(
            f"| {r.seq} | {r.at:%H:%M:%S} | {md_text(r.kind)} | {md_text(r.actor)} | "
            f"{_cell(r.summary)} |"
            for r in records[-AUDIT_RECORDS:]
        ),
    ]
    create_markdown_artifact(
        markdown="\n".join(lines), key="agent-audit", description=f"Audit trail ({when})"
    )
