"""Prefect tasks of the agent-task flow, each a thin step over infra/ with its artifact (the
artifacts' Markdown is tasks/artifacts.py's).

Their results persist and are cached per flow run and inputs: a run suspended for approval
starts its flow function again from the top when resumed, and every step before the
approval must come back from the cache instead of running (and changing things) again.
Inputs never include secrets: settings are read from the environment inside each task.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, RUN_ID
from pydantic import BaseModel

from blocks.loading import agent_spec, build_agent, load_guardrails
from blocks.production_target import ProductionTarget
from infra.agents import AgentContext, AgentReport, AgentSpec
from infra.agents.tools import Toolbox
from infra.ansible.playbook_runs import PlaybookRun, run_playbook
from infra.ansible.verification import VerificationReport, verify
from infra.escaping import md_code, md_text
from infra.host.permissions import write_private
from infra.machines import checkpoints, sandboxes
from infra.machines.owners import Owner
from infra.records import audit, runs
from infra.settings import get_settings
from infra.state import capture as captures
from infra.state.base import ChangeSet
from infra.state.diff import compare, markdown
from infra.state.export import export
from tasks.artifacts import (
    hosts_table,
    playbook_markdown,
    preview_markdown,
    preview_verdict,
    publish_audit_trail,
    verification_markdown,
)

BEFORE = "before"
# Cached per flow run and inputs, not per source code: a run resumed after a fluid upgrade
# must not redo (and repeat the side effects of) a step whose code changed meanwhile.
RESUMABLE = INPUTS + RUN_ID


class SealedPlaybook(BaseModel):
    """An attempt's playbook, copied read-only before anyone reviews it, and its digest."""

    path: str
    digest: str


def attempt_dir(run_id: str, attempt: int) -> Path:
    """The run's private folder for `attempt`: its change set, playbook and outputs."""
    return runs.attempt_dir(run_id, attempt)


def changeset_file(run_id: str, attempt: int) -> Path:
    """Where the whole change set of an attempt is kept (artifacts show it cut)."""
    return attempt_dir(run_id, attempt) / "changeset.json"


@task(name="prepare sandbox", persist_result=True, cache_policy=RESUMABLE)
def prepare_sandbox(run_id: str, image: str, ttl_minutes: int) -> sandboxes.Sandbox:
    """A fresh sandbox for this run, checkpointed as "before" the agent starts."""
    logger = get_run_logger()
    settings = get_settings()
    box = sandboxes.create(
        image=image,
        agent_id=f"run-{run_id[:8]}",
        ttl_minutes=ttl_minutes,
        owner=Owner.this_process(run_id),
        progress=logger.info,
        settings=settings,
    )
    try:
        # Nothing but fluid has run in it yet: its hashes may feed the image's hash index.
        checkpoints.create(box.id, BEFORE, settings, trusted=True)
    except BaseException:
        sandboxes.destroy(box.id, settings)
        raise
    logger.info("sandbox %s ready (ssh 127.0.0.1:%d), checkpoint %r", box.id, box.ssh_port, BEFORE)
    return box


@task(
    name="agent",
    task_run_name="agent attempt {attempt}",
    persist_result=True,
    cache_policy=RESUMABLE,
)
def run_agent(
    run_id: str,
    sandbox_id: str,
    task_text: str,
    agent: AgentSpec | str,
    attempt: int,
    feedback: str | None,
    guardrails: str | None = None,
) -> AgentReport:
    """Let the agent work through its tools (from "before" on a retry), then checkpoint."""
    logger = get_run_logger()
    settings = get_settings()
    if attempt > 1:
        checkpoints.restore(sandbox_id, BEFORE, settings)
        logger.info("sandbox %s back at checkpoint %r for attempt %d", sandbox_id, BEFORE, attempt)
    ctx = AgentContext(task=task_text, sandbox_id=sandbox_id, attempt=attempt, feedback=feedback)
    env = {"FLUID_TASK": task_text, "FLUID_ATTEMPT": str(attempt), "FLUID_FEEDBACK": feedback or ""}
    spec = agent_spec(agent)
    with Toolbox(
        sandbox_id,
        settings=settings,
        guardrails=load_guardrails(guardrails),
        actor=f"agent:{spec.kind}",
        run_id=run_id,
        say=logger.info,
        env=env,
    ) as tools:
        report = build_agent(spec).work(ctx, tools, say=logger.info)
    checkpoints.create(sandbox_id, f"after-{attempt}", settings)
    logger.info("agent done: %s", report.summary)
    publish_audit_trail(run_id, sandbox_id, f"attempt {attempt}")
    return report


@task(
    name="diff", task_run_name="diff attempt {attempt}", persist_result=True, cache_policy=RESUMABLE
)
def diff_attempt(run_id: str, sandbox_id: str, attempt: int) -> ChangeSet:
    """What the agent changed, compared between its checkpoints; a Markdown artifact."""
    settings = get_settings()
    before = captures.load(sandbox_id, BEFORE, settings)
    after = captures.load(sandbox_id, f"after-{attempt}", settings)
    cs = compare(before, after, settings=settings)
    # The whole change set, for every view that shows it cut.
    whole = write_private(changeset_file(run_id, attempt), cs.model_dump_json(indent=2).encode())
    create_markdown_artifact(
        markdown=markdown(cs, whole=str(whole)),
        key="agent-change",
        description=f"What the agent changed (attempt {attempt})",
    )
    get_run_logger().info("%d change(s); the whole change set is in %s", len(cs.changes), whole)
    return cs


@task(
    name="export playbook",
    task_run_name="export attempt {attempt}",
    persist_result=True,
    cache_policy=RESUMABLE,
)
def export_attempt(run_id: str, changeset: ChangeSet, attempt: int) -> SealedPlaybook:
    """The change as an Ansible playbook of this run, sealed: a read-only copy whose digest is
    stored before anyone sees it. That copy is what is proven, previewed, shown and applied."""
    folder = attempt_dir(run_id, attempt)
    work, sealed = folder / "export", folder / "playbook"
    # Left by a crashed earlier try of this task; a cache miss exports and seals again.
    runs.unseal(work)
    try:
        dig = runs.seal(export(changeset, work, get_settings()), sealed)
    finally:
        runs.unseal(work)
    runs.propose(run_id, dig)
    create_markdown_artifact(
        markdown=playbook_markdown(sealed, dig, attempt),
        key="agent-playbook",
        description=f"The playbook that would be applied (attempt {attempt})",
    )
    get_run_logger().info("playbook %s (read-only), digest %s", sealed, dig)
    return SealedPlaybook(path=str(sealed), digest=dig)


@task(
    name="prove playbook",
    task_run_name="prove attempt {attempt}",
    persist_result=True,
    cache_policy=RESUMABLE,
)
def prove_playbook(
    run_id: str, playbook_dir: Path, attempt: int, accept_exclusions: list[str] | None = None
) -> VerificationReport:
    """Replay the playbook on a fresh sandbox: converge, idempotence, zero residual. A change
    the playbook leaves out fails it (before any boot) unless `accept_exclusions` names it."""
    logger = get_run_logger()
    report = verify(
        Path(playbook_dir),
        settings=get_settings(),
        owner=Owner.this_process(run_id),
        progress=logger.info,
        accept_exclusions=accept_exclusions or (),
    )
    (logger.info if report.passed else logger.warning)(report.summary())
    whole = write_private(
        attempt_dir(run_id, attempt) / "verification.json",
        report.model_dump_json(indent=2).encode(),
    )
    create_markdown_artifact(
        markdown=verification_markdown(report, whole=str(whole)),
        key="agent-verification",
        description=f"Replay of the playbook on a fresh sandbox (attempt {attempt})",
    )
    return report


def _run_on_production(
    production: str, playbook_dir: Path, *, check: bool, output_file: Path
) -> PlaybookRun:
    target = ProductionTarget.load(production)
    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="fluid-prod-") as tmp:
        hosts = target.ansible_hosts(Path(tmp), settings)
        return run_playbook(
            Path(playbook_dir), hosts, check=check, diff=check, output_file=output_file
        )


@task(
    name="preview on production",
    task_run_name="preview attempt {attempt}",
    persist_result=True,
    cache_policy=RESUMABLE,
)
def preview_on_production(
    run_id: str, playbook_dir: Path, production: str, attempt: int
) -> PlaybookRun | None:
    """`--check --diff` against production, summarised per task and host for the reviewer
    (would change, no change, unknown until applied); never fails the run.

    Check mode cannot see earlier would-be changes: a task that needs one (a service of a
    package not installed yet, apt without package lists) fails there. fluid's playbooks
    ignore errors in check mode only, so the preview goes on and lists such a task as unknown
    until applied, with the module's message.
    """
    logger = get_run_logger()
    folder = attempt_dir(run_id, attempt)
    output = folder / "preview-output.txt"
    title = f"# Check-mode preview on {md_text(production)}"
    try:
        run = _run_on_production(production, playbook_dir, check=True, output_file=output)
    except Exception as e:  # the preview informs; it does not decide
        logger.warning("check-mode preview failed: %s", e)
        create_markdown_artifact(
            markdown=f"{title}\n\nCould not run: {md_code(str(e))}",
            key="agent-preview",
            description="ansible-playbook --check --diff against production",
        )
        return None
    whole = write_private(folder / "preview.json", run.model_dump_json(indent=2).encode())
    verdict = preview_verdict(run)
    create_markdown_artifact(
        markdown=preview_markdown(run, production, output=output, whole=whole),
        key="agent-preview",
        description=f"ansible-playbook --check --diff against production (attempt {attempt})",
    )
    logger.info("check-mode preview on %s: %s", production, verdict)
    return run


@task(name="apply to production", persist_result=True, cache_policy=RESUMABLE)
def apply_to_production(
    run_id: str, attempt: int, playbook_dir: Path, approved_digest: str, production: str
) -> PlaybookRun:
    """Apply the sealed playbook of `attempt`, after checking once more that it is byte for
    byte what was shown and approved (PlaybookChanged otherwise: nothing applied)."""
    logger = get_run_logger()
    actual = runs.check_approval(run_id, approved_digest, Path(playbook_dir))
    logger.info("digest %s matches the approval; applying to %s", actual, production)
    output = attempt_dir(run_id, attempt) / "apply-output.txt"
    run = _run_on_production(production, playbook_dir, check=False, output_file=output)
    rows = hosts_table(run)
    create_table_artifact(
        table=rows,
        key="agent-apply",
        description=f"Applied to {production}: {'succeeded' if run.succeeded else 'FAILED'}",
    )
    (logger.info if run.succeeded else logger.error)(
        "apply on %s %s (the whole output is in %s); it ends:\n%s",
        production,
        run.status,
        output,
        run.output_tail[-3000:],
    )
    return run


@task(name="publish audit trail")
def publish_audit(run_id: str, sandbox_id: str) -> str | None:
    """The run's audit trail and the chain's head hash, as the run's last artifact."""
    publish_audit_trail(run_id, sandbox_id, "end of run")
    return audit.head()


def extend_for_approval(sandbox_id: str, timeout_s: int) -> None:
    """Keep the sandbox past the approval deadline (plus an hour to finish)."""
    from datetime import UTC, datetime

    sandboxes.extend(
        sandbox_id,
        datetime.now(UTC) + timedelta(seconds=timeout_s) + timedelta(hours=1),
        get_settings(),
    )
