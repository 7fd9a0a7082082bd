"""Prefect tasks of the agent-task flow, each a thin step over infra/ with its artifact.

Their results persist and are cached per flow run and inputs: a run suspended for approval
starts its flow function again from the top when resumed, and every step before the
approval must come back from the cache instead of running (and changing things) again.
Inputs never include secrets: settings are read from the environment inside each task.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, RUN_ID
from pydantic import BaseModel

from blocks.production_target import ProductionTarget
from infra import audit, checkpoints, sandboxes
from infra.agents import AgentContext, AgentReport, AgentSpec
from infra.agents.tools import Toolbox
from infra.errors import FluidError
from infra.owners import Owner
from infra.playbook_runs import PlaybookRun, run_playbook
from infra.settings import get_settings
from infra.state import capture as captures
from infra.state.base import ChangeSet
from infra.state.diff import compare, markdown
from infra.state.export import digest, export
from infra.verification import VerificationReport, verify
from tasks.agents import agent_spec, build_agent, load_guardrails
from tasks.change import verification_markdown

BEFORE = "before"
# Cached per flow run and inputs, not per source code: a run resumed after a fluid upgrade
# must not redo (and repeat the side effects of) a step whose code changed meanwhile.
RESUMABLE = INPUTS + RUN_ID
# Text files of a playbook shown inline in its artifact; larger ones are only listed.
ARTIFACT_FILE_LIMIT = 20_000


class PlaybookChanged(FluidError):
    """The playbook on disk is not the one that was approved."""


class Proposal(BaseModel):
    """One attempt's change, as the reviewer sees it."""

    attempt: int
    playbook_dir: str
    digest: str
    changes: int
    summary: str
    verification: str
    verified: bool


def attempt_dir(run_id: str, attempt: int) -> Path:
    return get_settings().runs_dir / run_id / f"attempt-{attempt}"


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
        checkpoints.create(box.id, BEFORE, settings)
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
    _publish_audit(run_id, sandbox_id, f"attempt {attempt}")
    return report


def _cell(text: str) -> str:
    return text[:150].replace("|", "\\|").replace("\n", " ")


def _publish_audit(run_id: str, sandbox_id: str, when: str) -> None:
    """The run's audit records so far and the chain's head hash, as an artifact."""
    records = [r for r in audit.entries(run_id) if r.sandbox_id in (None, sandbox_id)]
    head = audit.head()
    lines = [
        f"# Audit trail ({when})",
        "",
        f"Chain head: `{head}` — check it later with `fluid audit verify --head {head}`.",
        "",
        "| # | time | kind | actor | what |",
        "|---|---|---|---|---|",
        *(
            f"| {r.seq} | {r.at:%H:%M:%S} | {r.kind} | {r.actor} | {_cell(r.summary)} |"
            for r in records[-200:]
        ),
    ]
    create_markdown_artifact(
        markdown="\n".join(lines), key="agent-audit", description=f"Audit trail ({when})"
    )


@task(
    name="diff", task_run_name="diff attempt {attempt}", persist_result=True, cache_policy=RESUMABLE
)
def diff_attempt(run_id: str, sandbox_id: str, attempt: int) -> ChangeSet:
    """What the agent changed, compared between its checkpoints; a Markdown artifact."""
    settings = get_settings()
    before = captures.load(sandbox_id, BEFORE, settings)
    after = captures.load(sandbox_id, f"after-{attempt}", settings)
    cs = compare(before, after, settings=settings)
    create_markdown_artifact(
        markdown=markdown(cs),
        key="agent-change",
        description=f"What the agent changed (attempt {attempt})",
    )
    get_run_logger().info("%d change(s)", len(cs.changes))
    return cs


def _playbook_markdown(directory: Path, dig: str, attempt: int) -> str:
    lines = [f"# Playbook (attempt {attempt})", "", f"Digest: `{dig}`", ""]
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel in ("DIGEST", "changeset.json"):
            continue
        data = path.read_bytes()
        if len(data) > ARTIFACT_FILE_LIMIT or b"\0" in data:
            lines += [f"## {rel}", "", f"({len(data)} bytes, not shown)", ""]
            continue
        lang = "yaml" if rel.endswith((".yml", ".yaml")) else ""
        lines += [f"## {rel}", "", f"```{lang}", data.decode(errors="replace").rstrip(), "```", ""]
    return "\n".join(lines)


@task(
    name="export playbook",
    task_run_name="export attempt {attempt}",
    persist_result=True,
    cache_policy=RESUMABLE,
)
def export_attempt(run_id: str, changeset: ChangeSet, attempt: int) -> Path:
    """The change as an Ansible playbook directory of this run; the playbook as an artifact."""
    out = attempt_dir(run_id, attempt) / "playbook"
    if out.exists():  # a half-written export from a crashed earlier try of this task
        shutil.rmtree(out)
    path = export(changeset, out, get_settings())
    dig = (path / "DIGEST").read_text().strip()
    create_markdown_artifact(
        markdown=_playbook_markdown(path, dig, attempt),
        key="agent-playbook",
        description=f"The playbook that would be applied (attempt {attempt})",
    )
    get_run_logger().info("playbook %s, digest %s", path, dig)
    return path


@task(
    name="prove playbook",
    task_run_name="prove attempt {attempt}",
    persist_result=True,
    cache_policy=RESUMABLE,
)
def prove_playbook(run_id: str, playbook_dir: Path, attempt: int) -> VerificationReport:
    """Replay the playbook on a fresh sandbox: converge, idempotence, zero residual."""
    logger = get_run_logger()
    report = verify(
        Path(playbook_dir),
        settings=get_settings(),
        owner=Owner.this_process(run_id),
        progress=logger.info,
    )
    (logger.info if report.passed else logger.warning)(report.summary())
    create_markdown_artifact(
        markdown=verification_markdown(report),
        key="agent-verification",
        description=f"Replay of the playbook on a fresh sandbox (attempt {attempt})",
    )
    return report


def _hosts_table(run: PlaybookRun) -> list[dict[str, object]]:
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


def _run_on_production(production: str, playbook_dir: Path, *, check: bool) -> PlaybookRun:
    target = ProductionTarget.load(production)
    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="fluid-prod-") as tmp:
        hosts = target.ansible_hosts(Path(tmp), settings)
        return run_playbook(Path(playbook_dir), hosts, check=check, diff=check)


@task(
    name="preview on production",
    task_run_name="preview attempt {attempt}",
    persist_result=True,
    cache_policy=RESUMABLE,
)
def preview_on_production(
    run_id: str, playbook_dir: Path, production: str, attempt: int
) -> PlaybookRun | None:
    """`--check --diff` against production, published for the reviewer; never fails the run.

    Check mode cannot see earlier would-be changes, so a service task for a package that is
    not installed yet fails here; the reviewer sees it, and the run goes on.
    """
    logger = get_run_logger()
    try:
        run = _run_on_production(production, playbook_dir, check=True)
    except Exception as e:  # the preview informs; it does not decide
        logger.warning("check-mode preview failed: %s", e)
        create_markdown_artifact(
            markdown=f"# Check-mode preview on {production}\n\nCould not run: `{e}`",
            key="agent-preview",
            description="ansible-playbook --check --diff against production",
        )
        return None
    verdict = (
        "clean"
        if run.succeeded
        else "with errors (expected for tasks that depend on earlier changes)"
    )
    md = [
        f"# Check-mode preview on {production}: {verdict}",
        "",
        "| host | ok | changed | failed | unreachable |",
        "|---|---|---|---|---|",
        *(
            f"| {r['host']} | {r['ok']} | {r['changed']} | {r['failed']} | {r['unreachable']} |"
            for r in _hosts_table(run)
        ),
        "",
        "```",
        run.output_tail[-5000:],
        "```",
    ]
    create_markdown_artifact(
        markdown="\n".join(md),
        key="agent-preview",
        description=f"ansible-playbook --check --diff against production (attempt {attempt})",
    )
    logger.info("check-mode preview on %s: %s", production, verdict)
    return run


@task(name="apply to production", persist_result=True, cache_policy=RESUMABLE)
def apply_to_production(
    run_id: str, playbook_dir: Path, approved_digest: str, production: str
) -> PlaybookRun:
    """Apply the approved playbook, after checking it is byte for byte what was approved."""
    logger = get_run_logger()
    actual = digest(Path(playbook_dir))
    if actual != approved_digest:
        raise PlaybookChanged(
            f"the playbook in {playbook_dir} changed after approval (approved digest "
            f"{approved_digest}, now {actual}); nothing was applied"
        )
    logger.info("digest %s matches the approval; applying to %s", actual, production)
    run = _run_on_production(production, playbook_dir, check=False)
    rows = _hosts_table(run)
    create_table_artifact(
        table=rows,
        key="agent-apply",
        description=f"Applied to {production}: {'succeeded' if run.succeeded else 'FAILED'}",
    )
    (logger.info if run.succeeded else logger.error)(
        "apply on %s %s:\n%s", production, run.status, run.output_tail[-3000:]
    )
    return run


@task(name="publish audit trail")
def publish_audit(run_id: str, sandbox_id: str) -> str | None:
    """The run's audit trail and the chain's head hash, as the run's last artifact."""
    _publish_audit(run_id, sandbox_id, "end of run")
    return audit.head()


def extend_for_approval(sandbox_id: str, timeout_s: int) -> None:
    """Keep the sandbox past the approval deadline (plus an hour to finish)."""
    from datetime import UTC, datetime

    sandboxes.extend(
        sandbox_id,
        datetime.now(UTC) + timedelta(seconds=timeout_s) + timedelta(hours=1),
        get_settings(),
    )
