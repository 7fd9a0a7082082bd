"""The human decision on a proposal: the form a reviewer answers, bound to the playbook's
digest, the Markdown review the form shows, and asking for it (a pause, or a suspension).

Everything in the review but fluid's own words is escaped (infra/escaping.py): change keys,
details and the task come from the agent or the guest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field, create_model

from infra.escaping import md_code, md_text
from infra.state.base import ChangeSet

AUTOMATIC_APPROVER = "fluid (automatic)"
# Changes listed in the approval form; the rest are counted and pointed to.
SUMMARY_LIMIT = 30
DIGEST_HELP = "The digest of the playbook shown above: the decision is about this playbook only"


class Proposal(BaseModel):
    """One attempt's change, as the reviewer sees it."""

    attempt: int
    playbook_dir: str
    digest: str
    changes: int
    summary: str
    verification: str
    verified: bool
    # Markdown: the changes the playbook leaves out, accepted by the run (shown first).
    exclusions: str = ""


class Approval(RunInput):
    """The reviewer's decision on the proposed playbook, naming it by its digest."""

    # Rejecting is the default: a resume without a decision must never apply anything.
    decision: Literal["approve", "reject"] = Field(
        default="reject", description="approve applies the playbook to production"
    )
    digest: str = Field(pattern="^[0-9a-f]{64}$", title="Digest", description=DIGEST_HELP)
    approver: str = Field(min_length=1, description="Your name, stored with the decision")
    comment: str = Field(
        default="", description="Why; on reject the agent gets it as feedback for its next try"
    )


def automatic_approval(digest: str) -> Approval:
    """The approval a run with auto-approve gives itself (stored as automatic)."""
    return Approval(
        decision="approve", digest=digest, approver=AUTOMATIC_APPROVER, comment="auto-approve"
    )


def approval_form(digest: str) -> type[Approval]:
    """The form for one proposal: Prefect's server accepts no digest but `digest` (the form's
    schema is stored with the pause), and the UI shows it filled in."""
    return create_model(
        "Approval",
        __base__=Approval,
        digest=(
            Literal[digest],  # type: ignore[valid-type]
            Field(title="Digest", description=DIGEST_HELP, json_schema_extra={"default": digest}),
        ),
    )


def pause_key(attempt: int, digest: str) -> str:
    """Each pause is its attempt and digest: a resumed run whose proposal came out different
    asks again instead of receiving an answer about another playbook."""
    return f"attempt-{attempt}-{digest}"


def ask(proposal: Proposal, description: str, timeout_s: int, suspend: bool) -> Approval:
    """Wait up to `timeout_s` for the reviewer's answer on `proposal`: suspended (no process
    held; Pause is raised) or paused in process. FlowPauseTimeout when no answer comes."""
    form = approval_form(proposal.digest).with_initial_data(description=description)
    key = pause_key(proposal.attempt, proposal.digest)
    if suspend:
        return suspend_flow_run(wait_for_input=form, timeout=timeout_s, key=key)
    return pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=2, key=key)


def review_description(task: str, proposal: Proposal, production: str, max_attempts: int) -> str:
    """The approval form's Markdown: what the task was, what would change and how it was
    proven, and what approving or rejecting does."""
    return "\n".join(
        [
            f"## Approve this change to **{md_text(production)}**?",
            "",
            f"Task: {md_text(task)}",
            "",
            f"Attempt {proposal.attempt} of {max_attempts}. Replay on a fresh sandbox: "
            f"{md_text(proposal.verification)}",
            "",
            f"Playbook digest: {md_code(proposal.digest)}",
            "",
            *([proposal.exclusions, ""] if proposal.exclusions else []),
            f"{proposal.changes} change(s):",
            "",
            proposal.summary,
            "",
            "The full diff, the playbook and the check-mode preview are in this run's "
            "Artifacts. Approve applies exactly this playbook (the form's digest names it); "
            "reject sends your comment to the agent, which tries again from a clean sandbox.",
        ]
    )


def exclusions(changeset: ChangeSet, accepted: list[str]) -> str:
    """The changes the playbook leaves out, each named with why (all of them: a reviewer
    approves knowing what production will not get); Markdown, or "" when there are none."""
    excluded = [c for c in changeset.changes if c.excluded]
    if not excluded:
        return ""
    lines = [
        f"**Not in the playbook: {len(excluded)} change(s) no replay reproduces** "
        "(production will not get them from this playbook):",
        "",
    ]
    for c in excluded:
        state = "accepted by this run" if c.key in accepted else "NOT accepted"
        lines.append(f"- {md_text(c.kind)} {md_code(c.key)}: {md_text(c.exclusion())} ({state})")
    return "\n".join(lines)


def summary(changeset: ChangeSet, whole: Path) -> str:
    """The changes as a Markdown list, cut at SUMMARY_LIMIT saying how many more and where;
    the changes the playbook leaves out come first (and are listed again above, whole)."""
    lines = [
        f"- {c.action} {c.kind} {md_code(c.key)}"
        + (f" ({md_text('; '.join(c.details))})" if c.details else "")
        + ("" if c.exported else " *(not exported)*")
        for c in sorted(changeset.changes, key=lambda c: not c.excluded)[:SUMMARY_LIMIT]
    ]
    more = len(changeset.changes) - SUMMARY_LIMIT
    if more > 0:
        lines.append(
            f"- *{more} more changes not shown here; the whole change set is in the "
            f"`agent-change` artifact and in {md_code(str(whole))}*"
        )
    return "\n".join(lines)
