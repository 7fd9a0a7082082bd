"""No change left behind: what the playbook leaves out fails the proof unless accepted by name,
and the check-mode preview says, task by task, what production would see.

On real VMs with real Ansible: a sandbox change that holds a private key (fluid never keeps
its content, so no playbook can carry it) fails verification before a replay boots, and passes
once the run accepts that path; a playbook that installs a package, writes into the package's
directory and enables its service is previewed on a fresh production VM past every task that
fails in check mode, and applied for real it still stops at a task that truly fails.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows import approval
from infra.ansible.playbook_runs import PlaybookRun, run_playbook, sandbox_host
from infra.ansible.verification import VerificationReport, unaccepted_message, verify
from infra.escaping import md_text
from infra.machines import sandboxes
from infra.settings import FluidSettings
from infra.state import capture
from infra.state.base import Change, ChangeSet
from infra.state.capture import blob_store
from infra.state.diff import compare, markdown, residual, terminal
from infra.state.export import export
from tasks.agent_task import preview_on_production
from tasks.artifacts import verification_markdown
from tests.ansible_lint import lint_playbook
from tests.conftest import FLUID, fluid

DIR = f"/srv/proof-{secrets.token_hex(3)}"
KEY = f"{DIR}/id_ed25519"
NOTES = f"{DIR}/notes.txt"
# Not a real key: its PEM header is what makes fluid refuse to keep the content.
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
MISSING_PACKAGE = "fluid-no-such-package"
PREVIEW_DIR = f"/srv/preview-{secrets.token_hex(3)}"
NGINX_CONF = "/etc/nginx/conf.d/fluid-proof.conf"


def file_change(key: str, action: str = "added", **after) -> Change:
    state = {"type": "file", "mode": 0o644, "owner": "root", "group": "root"}
    state |= {"sha256": None, "target": None} | after
    return Change(kind="files", key=key, action=action, after=state)


# --- the rule, on change sets: every change is exported, brought by one, or excluded ---------


def test_a_change_left_out_is_an_exclusion_and_a_dependency_is_not():
    key = file_change(KEY).leave_out("holds private key material: not exported")
    dependency = Change(kind="packages", key="libx", action="added", after={"version": "1"})
    dependency.brought_by("installed as a dependency")
    assert key.excluded and not key.exported
    assert key.exclusion() == "not reproducible, because holds private key material: not exported"
    assert not dependency.excluded and not dependency.exported
    # Whatever marks a change not exported without saying what brings it: an exclusion.
    assert file_change("/x").model_copy(update={"exported": False}).excluded


def test_the_residual_expects_every_change_but_an_exclusion_accepted_by_its_key():
    notes = file_change(NOTES, sha256="a" * 64)
    key = file_change(KEY, sha256="b" * 64).leave_out("holds private key material")
    dependency = Change(kind="packages", key="libx", action="added", after={"version": "1"})
    dependency.brought_by("installed as a dependency")
    expected = ChangeSet(changes=[notes, key, dependency])
    replayed = ChangeSet(changes=[notes])
    missing = residual(expected, replayed)
    assert [(c.key, c.note) for c in missing] == [
        (KEY, "expected but not reproduced: not reproducible, because holds private key material"),
        ("libx", "expected but not reproduced"),
    ]
    assert [c.key for c in residual(expected, replayed, accepted={KEY})] == ["libx"]
    # Accepting a key accepts an exclusion only: an exported change is still expected.
    assert [c.key for c in residual(expected, ChangeSet(), accepted={NOTES, KEY})] == [
        NOTES,
        "libx",
    ]
    # Made otherwise: the residual says which fields differ.
    other = file_change(NOTES, sha256="c" * 64, mode=0o600)
    assert [c.note for c in residual(ChangeSet(changes=[notes]), ChangeSet(changes=[other]))] == [
        "expected but not reproduced: the replay made it with another mode, sha256",
        "not in the original change",
    ]


def test_the_diff_and_the_approval_form_show_exclusions_first():
    changes = [file_change(f"/srv/f{i}") for i in range(40)]
    changes.append(file_change(KEY).leave_out("holds private key material"))
    cs = ChangeSet(sandbox_id="s", changes=changes)
    md = markdown(cs)
    assert md.index("## Not reproduced: 1 change(s)") < md.index("## Files")
    assert md.index(KEY) < md.index("/srv/f0")
    assert "--accept-exclusion KEY" in md
    term = terminal(cs, limit=5)
    assert term.index("not reproduced: 1 change(s)") < term.index("files:")
    assert KEY in term.split("files:")[0]
    # The approval form: the exclusion above the list of changes, named, with its state;
    # the list (cut at 30) starts with it too.
    summary = approval.summary(cs, Path("/runs/x/changeset.json"))
    assert summary.splitlines()[0].startswith(f"- added files `{KEY}`")
    proposal = approval.Proposal(
        attempt=1,
        playbook_dir="/p",
        digest="d" * 64,
        changes=len(cs.changes),
        summary=summary,
        verification="PASSED",
        verified=True,
        exclusions=approval.exclusions(cs, [KEY]),
    )
    form = approval.review_description("task", proposal, "prod", 3)
    assert form.index("Not in the playbook: 1 change(s)") < form.index("41 change(s):")
    assert f"`{KEY}`: not reproducible, because holds private key material " in form
    assert "(accepted by this run)" in form


def test_the_verification_artifact_names_each_exclusion_before_the_timings():
    key = file_change(KEY).leave_out("holds private key material")
    other = file_change("/srv/big.bin").leave_out("content not captured")
    report = VerificationReport(
        image="debian-12",
        sandbox_id="verify-x",
        passed=False,
        residual=[],
        timings={},
        excluded=[other],
        accepted=[key],
        unmatched=["/nope"],
        error=unaccepted_message([other]),
    )
    md = verification_markdown(report)
    verdict = "FAILED: 1 change(s) the playbook leaves out are not accepted; no replay was booted"
    assert md.startswith(f"# Verification: {md_text(verdict)}\n")
    assert md.index("## Not reproduced and not accepted (the proof fails): 1") < md.index(
        "## Not reproduced, accepted by this run: 1"
    )
    assert md.index("/srv/big.bin") < md.index(KEY) < md.index("| step | seconds |")
    assert "`/nope`" in md


# --- the proof on real VMs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_playbook(
    agent_box: sandboxes.Sandbox, settings: FluidSettings, tmp_path_factory
) -> Iterator[Path]:
    """An agent's change in the shared sandbox: an ordinary file and a private key beside it,
    exported as a playbook (the key left out: its content is never kept)."""
    before = capture.capture(agent_box.id, settings=settings)
    script = (
        f"mkdir -p {DIR} && echo 'deploy notes' > {NOTES} && "
        f"printf '%s' '{PRIVATE_KEY}' > {KEY} && chmod 0600 {KEY}"
    )
    r = sandboxes.run(agent_box.id, script, timeout=120, settings=settings)
    assert r.exit_status == 0, r.stderr_text
    cs = compare(before, capture.capture(agent_box.id, settings=settings), settings=settings)
    assert {(c.key, c.exported) for c in cs.changes} == {(DIR, True), (NOTES, True), (KEY, False)}
    try:
        playbook = export(cs, tmp_path_factory.mktemp("proof") / "playbook", settings)
        lint_playbook(playbook)
        yield playbook
    finally:
        sandboxes.run(agent_box.id, f"rm -rf {DIR}", timeout=60, settings=settings)


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_a_change_no_playbook_can_carry_fails_the_proof_before_a_replay_boots(
    keyed_playbook: Path, settings: FluidSettings
):
    before = {s.id for s in sandboxes.list_sandboxes(settings).sandboxes}
    start = time.monotonic()
    report = verify(keyed_playbook, settings=settings)
    assert time.monotonic() - start < 30, "a replay that must fail was booted"
    assert {s.id for s in sandboxes.list_sandboxes(settings).sandboxes} == before
    assert not report.passed and report.timings == {}
    assert [c.key for c in report.excluded] == [KEY] and report.accepted == []
    assert report.error is not None
    assert f"files {KEY!r}: not reproducible, because holds private key material" in report.error
    assert f"--accept-exclusion {KEY}" in report.error
    assert report.summary().startswith("FAILED: 1 change(s) of the sandbox are not in the playbook")

    r = subprocess.run([FLUID, "verify", str(keyed_playbook)], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert r.stdout.startswith("FAILED: 1 change(s) the playbook leaves out are not accepted")
    assert f"  not accepted: files {KEY}  # not reproducible, because holds " in r.stdout
    assert f"fluid verify DIR --accept-exclusion {KEY}" in r.stdout


@pytest.mark.vm
@pytest.mark.timeout(1800)
def test_the_same_proof_accepting_that_path_passes_and_names_it(keyed_playbook: Path):
    r = subprocess.run(
        [FLUID, "verify", str(keyed_playbook), "--accept-exclusion", KEY],
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("PASSED: residual 0 change(s)")
    assert f"1 accepted exclusion(s), not reproduced: files {KEY!r}" in first
    assert f"accepted exclusion: files {KEY}  # not reproducible, because holds " in r.stdout


RUN_DIR = f"/srv/proof-run-{secrets.token_hex(3)}"
RUN_KEY = f"{RUN_DIR}/id_ed25519"


@pytest.mark.vm
@pytest.mark.timeout(2400)
def test_fluid_run_fails_on_an_exclusion_it_did_not_accept_and_applies_once_it_does(
    production_vm: dict, tmp_path: Path
):
    steps = tmp_path / "steps.yml"
    steps.write_text(
        json.dumps(
            [
                {"run": f"mkdir -p {RUN_DIR}"},
                {"write": f"{RUN_DIR}/notes.txt", "content": "deploy notes\n"},
                {"write": RUN_KEY, "content": PRIVATE_KEY, "mode": "0600"},
            ]
        )
    )
    run = [FLUID, "run", "leave a deploy key", "--steps", str(steps), "--auto-approve"]
    run += ["--production", production_vm["name"]]
    refused = subprocess.run(run, capture_output=True, text=True, timeout=1200)
    assert refused.returncode == 1, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "the playbook leaves out 1 change(s) this run did not accept" in refused.stdout
    assert f"--accept-exclusion {RUN_KEY}" in refused.stdout
    assert "verify: create" not in refused.stdout, "a replay that must fail was booted"

    applied = subprocess.run(
        [*run, "--accept-exclusion", RUN_KEY], capture_output=True, text=True, timeout=2000
    )
    try:
        assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
        assert f"1 accepted exclusion(s), not reproduced: files {RUN_KEY!r}" in applied.stdout
        where = production_vm["name"]
        notes = fluid("production", "exec", where, "--", f"cat {RUN_DIR}/notes.txt")
        assert notes.stdout == b"deploy notes\n"
        key = fluid("production", "exec", where, "--", f"test -e {RUN_KEY}", check=False)
        assert key.returncode == 1, "fluid never keeps a private key, so never applies one"
    finally:
        fluid("production", "exec", production_vm["name"], "--", f"rm -rf {RUN_DIR}", check=False)


# --- the check-mode preview ----------------------------------------------------------------


def nginx_change(settings: FluidSettings) -> ChangeSet:
    """A package with a file in its directory and its service, a directory production has and
    one it lacks; one package name no archive has (a task that truly fails)."""
    conf = blob_store(settings).put(b"server { listen 8089; }\n")
    directory = {"type": "directory", "mode": 0o755, "sha256": None}
    return ChangeSet(
        sandbox_id="t-proof",
        changes=[
            Change(kind="packages", key="nginx", action="added", after={"version": "1.22"}),
            Change(kind="packages", key=MISSING_PACKAGE, action="added", after={"version": "1"}),
            file_change("/srv", **directory),
            file_change(PREVIEW_DIR, **directory),
            file_change(NGINX_CONF, sha256=conf),
            Change(
                kind="services",
                key="nginx.service",
                action="added",
                after={"enablement": "enabled", "active": "active"},
            ),
        ],
    )


@pytest.fixture(scope="module")
def nginx_playbook(settings: FluidSettings, tmp_path_factory) -> Path:
    playbook = export(nginx_change(settings), tmp_path_factory.mktemp("nginx") / "pb", settings)
    lint_playbook(playbook)
    return playbook


@flow(name="t-preview", persist_result=False)
def preview_flow(run_id: str, playbook: str, production: str) -> PlaybookRun | None:
    return preview_on_production(run_id, Path(playbook), production, 1)


@pytest.mark.vm
@pytest.mark.timeout(1200)
def test_the_check_mode_preview_runs_every_task_and_says_what_would_change(
    production_vm: dict, nginx_playbook: Path
):
    state = preview_flow(
        str(uuid.uuid4()), str(nginx_playbook), production_vm["name"], return_state=True
    )
    run = state.result()
    assert run is not None and run.check
    seen = {t.task: (t.status, t.message) for t in run.tasks}
    assert len(run.tasks) == run.tasks_total
    # Every task ran, in order: apt has no package lists in check mode and the unit is not
    # there yet (unknown until applied); /srv is there already; the rest would change.
    assert [t.status for t in run.tasks] == [
        "ignored",  # install packages
        "ok",  # /srv
        "changed",  # the new directory
        "changed",  # the file under the package's directory
        "ignored",  # the service
        "ignored",  # its restart handler, notified by the file
    ], seen
    names = [t.task for t in run.tasks]
    assert names[0] == "Install packages"
    # Without package lists apt names nginx first; where an earlier test's apt-get update left
    # lists on the shared production VM, only the package no archive has.
    assert any(
        f"No package matching '{name}' is available" in seen["Install packages"][1]
        for name in ("nginx", MISSING_PACKAGE)
    ), seen["Install packages"]
    assert names[1].endswith(" /srv") and PREVIEW_DIR in names[2] and NGINX_CONF in names[3]
    assert "nginx" in names[4] and "nginx" in names[5]
    assert "Could not find the requested service nginx" in run.tasks[4].message
    assert run.succeeded  # it went to the end of the play

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["agent-preview"])),
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
        )
    assert len(artifacts) == 1
    md = str(artifacts[0].data)
    assert md.startswith(f"# Check-mode preview on {md_text(production_vm['name'])}: with errors")
    for label in ("would change", "no change", "unknown until applied"):
        assert f"| {label} |" in md, label
    assert md_text(seen["Install packages"][1]) in md


@pytest.mark.vm
@pytest.mark.timeout(1200)
def test_a_real_apply_of_that_playbook_still_stops_at_a_task_that_fails(
    agent_box: sandboxes.Sandbox, nginx_playbook: Path, settings: FluidSettings, tmp_path
):
    hosts = [sandbox_host(agent_box.id, tmp_path, settings)]
    run = run_playbook(nginx_playbook, hosts, settings=settings)
    assert not run.succeeded and run.tasks, run.output_tail[-3000:]
    assert [(t.task, t.status) for t in run.tasks] == [("Install packages", "failed")], (
        run.output_tail[-3000:]
    )
    assert MISSING_PACKAGE in run.tasks[0].message
    r = sandboxes.run(agent_box.id, f"test -e {PREVIEW_DIR}", timeout=60, settings=settings)
    assert r.exit_status == 1, "a task after the failure ran"
