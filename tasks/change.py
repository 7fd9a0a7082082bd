"""Prefect tasks over infra's change capture: capture, diff, export and replay verification.

Markdown artifacts show the change and the verification in the Prefect UI.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from infra.ansible.verification import VerificationReport, verify
from infra.escaping import md_block, md_code, md_text
from infra.settings import FluidSettings
from infra.state import capture as captures
from infra.state.base import Capture, Change, ChangeSet
from infra.state.diff import ACCEPT_HOW, compare, exclusions_table, markdown
from infra.state.export import export

# The end of a failed replay's error shown in the verification artifact.
ERROR_TAIL = 3000


@task(
    name="capture",
    task_run_name="capture {sandbox_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=5,
)
def capture_state(
    sandbox_id: str, checkpoint: str | None = None, settings: FluidSettings | None = None
) -> Capture:
    """Capture a sandbox's state (read-only in the guest, so one retry is safe)."""
    cap = captures.capture(sandbox_id, checkpoint=checkpoint, settings=settings)
    get_run_logger().info(
        "captured %s in %.1f s (%d files)",
        sandbox_id,
        cap.duration_s,
        len(cap.state("files").entries),
    )
    return cap


@task(name="diff", cache_policy=NO_CACHE, persist_result=False)
def diff_captures(
    before: Capture,
    after: Capture,
    settings: FluidSettings | None = None,
    artifact_key: str | None = "change",
) -> ChangeSet:
    """Compare two captures and publish the change as a Markdown artifact."""
    cs = compare(before, after, settings=settings)
    get_run_logger().info("%d change(s) in %s", len(cs.changes), cs.sandbox_id)
    if artifact_key:
        create_markdown_artifact(
            markdown=markdown(cs), key=artifact_key, description="What the agent changed"
        )
    return cs


@task(name="export playbook", cache_policy=NO_CACHE, persist_result=False)
def export_playbook(changeset: ChangeSet, out: Path, settings: FluidSettings | None = None) -> Path:
    """Write the change as an Ansible playbook directory."""
    path = export(changeset, Path(out), settings)
    get_run_logger().info("playbook %s, digest %s", path, (path / "DIGEST").read_text().strip())
    return path


@task(name="verify playbook", cache_policy=NO_CACHE, persist_result=False)
def verify_playbook(
    playbook_dir: Path,
    image: str | None = None,
    settings: FluidSettings | None = None,
    artifact_key: str | None = "verification",
    accept_exclusions: list[str] | None = None,
) -> VerificationReport:
    """Replay the playbook on a fresh sandbox (create → converge → idempotence → verify);
    changes it leaves out fail the proof unless named in `accept_exclusions`."""
    logger = get_run_logger()
    report = verify(
        Path(playbook_dir),
        image=image,
        settings=settings,
        progress=logger.info,
        accept_exclusions=accept_exclusions or (),
    )
    logger.info(report.summary())
    if artifact_key:
        create_markdown_artifact(
            markdown=verification_markdown(report),
            key=artifact_key,
            description="Replay of the playbook on a fresh sandbox",
        )
    return report


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
