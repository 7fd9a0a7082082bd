"""The agent-task flow end to end: a real Prefect server and worker, real VMs, real Ansible.

Each test's agent writes under its own /srv/<tag>/ so the shared production VM shows exactly
which runs reached it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from sqlmodel import select

from infra.host.identity import host_id
from infra.machines import sandbox_records, sandboxes
from infra.records import runs, store
from infra.settings import FluidSettings
from orchestration import control_plane
from tests.ansible_lint import lint_playbook
from tests.chat_server import Assistant, ChatServer, Request
from tests.conftest import FLUID, fluid, leftovers
from tests.repo import ROOT

T = TypeVar("T")
RUN_ID_LINE = "run id: "


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 2.0) -> T:
    """Poll `check` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def read_run(run_id: UUID | str) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(str(run_id)))


def wait_waiting(run_id: UUID | str, attempt: int, timeout: float = 900) -> FlowRun:
    """Wait until the run waits for a decision on `attempt`."""

    def check() -> FlowRun | None:
        fr = read_run(run_id)
        assert fr.state is not None
        if fr.state.is_final():
            raise AssertionError(f"run ended {fr.state.name} ({fr.state.message}) while waited on")
        rec = runs.get(str(run_id))
        if fr.state.is_paused() and rec is not None and rec.attempts == attempt:
            return fr
        return None

    return wait_for(check, timeout, f"run {run_id} to wait for approval of attempt {attempt}")


def wait_final(run_id: UUID | str, timeout: float = 900) -> FlowRun:
    return wait_for(
        lambda: (fr := read_run(run_id)).state is not None and fr.state.is_final() and fr,
        timeout,
        f"run {run_id} to end",
    )


def scripted(tag: str) -> dict[str, Any]:
    """An agent that writes a file and records the reviewer's feedback next to it."""
    return {
        "kind": "scripted",
        "steps": [
            {"write": f"/srv/{tag}/hello.txt", "content": f"hello from {tag}\n"},
            {"run": f'printf "%s\\n" "$FLUID_FEEDBACK" > /srv/{tag}/feedback.txt'},
        ],
    }


def on_production(name: str, command: str) -> subprocess.CompletedProcess:
    return fluid("production", "exec", name, "--", command, check=False)


def sandbox_of(run_id: UUID | str) -> str:
    rec = runs.get(str(run_id))
    assert rec is not None and rec.sandbox_id, f"run {run_id} has no sandbox on record"
    return rec.sandbox_id


@pytest.fixture(scope="module")
def production(production_vm: dict) -> str:
    """The session's production VM (tests/conftest.py) with its ProductionTarget block."""
    return production_vm["name"]


def reviewing_model(tag: str) -> Callable[[Request], Assistant]:
    """A scripted model: it writes a file and the reviewer's feedback (from its first user
    message, as a model would read it) next to it, then finishes."""

    def turn(request: Request) -> Assistant:
        if request.messages[-1]["role"] == "tool":
            return Assistant(tool_calls=[("finish", {"summary": f"wrote /srv/{tag}"})])
        prompt = request.messages[1]["content"]
        feedback = prompt.split("feedback:", 1)[1].strip() if "feedback:" in prompt else "none"
        return Assistant(
            content="Writing the file.",
            tool_calls=[
                ("write_file", {"path": f"/srv/{tag}/hello.txt", "content": f"hello from {tag}\n"}),
                ("write_file", {"path": f"/srv/{tag}/feedback.txt", "content": feedback + "\n"}),
            ],
        )

    return turn


def test_reject_then_approve_from_the_cli(
    production: str, prefect_stack: control_plane.ControlPlane, settings: FluidSettings
) -> None:
    """`fluid run` with an LLM endpoint (no saved block) waits; a rejection reaches the model;
    only the approved attempt is applied."""
    with ChatServer([reviewing_model("reviewed")] * 4) as model:
        proc = subprocess.Popen(
            [FLUID, "run", "write the reviewed file", "--production", production]
            + ["--llm-base-url", model.url, "--llm-model", "test-model"]
            + ["--llm-api-key-env", "FLUID_TEST_LLM_KEY"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "FLUID_TEST_LLM_KEY": "sk-test-123"},
        )
        _reject_then_approve(proc, production, settings)
    model.check()
    assert len(model.requests) == 4  # two turns per attempt; finish needs no further request
    assert {r.headers.get("authorization") for r in model.requests} == {"Bearer sk-test-123"}
    assert "please say please" in model.requests[2].messages[1]["content"]


def _reject_then_approve(proc: subprocess.Popen, production: str, settings: FluidSettings) -> None:
    output: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith(RUN_ID_LINE):
                break
        run_id = output[-1].removeprefix(RUN_ID_LINE).strip()
        wait_waiting(run_id, attempt=1)
        sid = sandbox_of(run_id)
        assert on_production(production, "test -e /srv/reviewed").returncode == 1

        # A suspended run holds no process: the worker can restart and the sandbox waits.
        assert control_plane.stop_worker(settings)
        assert sandboxes.get(sid, settings).state == "running"
        control_plane.start_worker(settings)

        fluid("reject", run_id, "--comment", "please say please", "--approver", "bob")
        wait_waiting(run_id, attempt=2)
        assert on_production(production, "test -e /srv/reviewed").returncode == 1

        # `fluid approve` shows the attempt, the change and its digest; with no terminal to
        # confirm on it sends nothing until given the digest it showed.
        approve = [FLUID, "approve", run_id, "--comment", "looks right", "--approver", "alice"]
        shown = subprocess.run(
            approve,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=300,
        )
        assert shown.returncode == 1 and b"pass --digest" in shown.stderr, shown.stderr
        assert b"waits for approval of attempt 2" in shown.stdout, shown.stdout
        assert b"/srv/reviewed/hello.txt" in shown.stdout
        digest = re.search(rb"^digest: ([0-9a-f]{64})$", shown.stdout, re.M)
        assert digest is not None, shown.stdout
        fluid(*approve[1:], "--digest", digest.group(1).decode())
        rest, _ = proc.communicate(timeout=900)
        output.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(output)
    assert proc.returncode == 0, text[-3000:]
    assert f"fluid approve {run_id}" in text  # told the user how to decide

    feedback = on_production(production, "cat /srv/reviewed/feedback.txt")
    assert feedback.stdout == b"please say please\n"
    assert (
        on_production(production, "cat /srv/reviewed/hello.txt").stdout == b"hello from reviewed\n"
    )

    decided = runs.decisions(run_id)
    assert [(d.attempt, d.outcome, d.approver) for d in decided] == [
        (1, "rejected", "bob"),
        (2, "approved", "alice"),
    ]
    assert decided[0].comment == "please say please" and not decided[1].automatic
    rec = runs.get(run_id)
    assert rec is not None and rec.status == "applied" and decided[1].digest == rec.digest
    # The playbook the run exported and applied (its second attempt's) passes ansible-lint.
    lint_playbook(settings.runs_dir / run_id / "attempt-2" / "playbook")
    applied = runs.applies(run_id)
    assert len(applied) == 1 and applied[0].changed > 0 and applied[0].failed == 0
    assert leftovers(sid, settings) == []


@pytest.fixture(scope="module")
def late_run(production: str, tmp_path_factory) -> Iterator[subprocess.Popen]:
    """`fluid run --timeout 10` that nobody answers, started in the background next to the
    tampered run (the two pipelines overlap, which saves CI time)."""
    steps = tmp_path_factory.mktemp("late") / "steps.yml"
    steps.write_text(json.dumps(scripted("late")["steps"]))
    proc = subprocess.Popen(
        [FLUID, "run", "write the late file", "--steps", str(steps)]
        + ["--production", production, "--timeout", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.usefixtures("late_run")
def test_tampered_playbook_is_refused_and_the_sandbox_cannot_resume_the_run(
    production: str,
    prefect_stack: control_plane.ControlPlane,
    settings: FluidSettings,
    tmp_path: Path,
) -> None:
    """Only fluid holds the API credential; a playbook edited after review is never applied,
    though a reviewer approves the suspended run in the Prefect UI."""
    from tests import prefect_ui

    fr = run_deployment(
        "agent-task/agent-task",
        parameters={"task": "write a file", "production": production, "agent": scripted("tamper")},
        timeout=0,
    )
    wait_waiting(fr.id, attempt=1)
    sid = sandbox_of(fr.id)
    # The sandbox outlives the approval deadline (3600 s by default), not just its 2 h TTL.
    expires = sandboxes.get(sid, settings).expires_at
    assert expires.replace(tzinfo=expires.tzinfo or UTC) > datetime.now(UTC) + timedelta(hours=1)
    secret = prefect_stack.auth_string.get_secret_value()
    port = prefect_stack.api_url.split(":")[2].split("/")[0]

    # From inside the sandbox: no credential anywhere, and the API is out of reach.
    probe = f"""
grep -rIlF -e '{secret}' /etc /root /home /srv /opt /tmp /var/tmp /run 2>/dev/null && echo LEAKED
env | grep -i prefect && echo LEAKED
python3 - <<'EOF'
import json, urllib.request
req = urllib.request.Request(
    "http://10.0.2.2:{port}/api/flow_runs/{fr.id}/resume",
    data=json.dumps({{"run_input": {{"decision": "approve", "approver": "agent"}}}}).encode(),
    headers={{"Content-Type": "application/json"}}, method="POST")
try:
    print("REACHED", urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print("REACHED", e.code)
except OSError as e:
    print("BLOCKED", e)
EOF
"""
    r = sandboxes.run(sid, probe, timeout=120, settings=settings)
    assert "LEAKED" not in r.stdout_text
    assert "BLOCKED" in r.stdout_text, r.stdout_text + r.stderr_text
    # Even on the host, the API refuses a resume without fluid's auth string.
    req = urllib.request.Request(
        f"{prefect_stack.api_url}/flow_runs/{fr.id}/resume",
        data=b'{"run_input": {"decision": "approve", "approver": "x"}}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401
    state = read_run(fr.id).state
    assert state is not None and state.is_paused()

    # Someone edits the reviewed playbook (sealed read-only, which stops no root), then the
    # reviewer approves what they saw, in the UI. A deployment's run waiting for approval holds
    # no process: it is Suspended, not Paused, and the UI resumes it all the same.
    assert state.name == "Suspended", state
    rec = runs.get(str(fr.id))
    assert rec is not None and rec.digest
    playbook = settings.runs_dir / str(fr.id) / "attempt-1" / "playbook"
    tasks_file = playbook / "roles" / "fluid_change" / "tasks" / "main.yml"
    assert (tasks_file.stat().st_mode & 0o777) == 0o400
    tasks_file.write_text(
        tasks_file.read_text()
        + "- name: sneaky\n  ansible.builtin.copy:\n    dest: /srv/tamper/sneaky\n    content: x\n"
    )
    shots = Path(os.environ.get("FLUID_TEST_SCREENSHOTS", tmp_path / "screenshots"))
    with prefect_ui.browser(shots / "suspended") as page:
        prefect_ui.login(page, prefect_stack.ui_url, secret)
        prefect_ui.approve_waiting_run(
            page,
            prefect_stack.ui_url,
            str(fr.id),
            {"decision": "approve", "digest": rec.digest, "approver": "carol"},
            shots / "suspended",
            expect_description=["Approve this change", rec.digest],
        )
    final = wait_final(fr.id)
    assert final.state is not None and final.state.is_failed()
    assert "changed after it was shown for approval" in (final.state.message or "")
    assert on_production(production, "test -e /srv/tamper").returncode == 1
    decided = runs.decisions(str(fr.id))
    assert [(d.outcome, d.approver) for d in decided] == [("refused", "carol")]
    assert decided[0].digest == rec.digest
    assert leftovers(sid, settings) == []


def test_a_run_not_approved_in_time_applies_nothing(
    production: str, late_run: subprocess.Popen, settings: FluidSettings
) -> None:
    """The approval deadline passes while suspended: exit 3, nothing applied, sandbox reaped."""
    stdout, _ = late_run.communicate(timeout=1200)
    out = stdout.decode()
    assert late_run.returncode == 3, out[-3000:]
    run_id = next(
        line.removeprefix(RUN_ID_LINE) for line in out.splitlines() if line.startswith(RUN_ID_LINE)
    )
    sid = sandbox_of(run_id)
    # No code of the suspended run runs again: the janitor removes its sandbox (this call, or
    # the deployment's scheduled sweep if it came first).
    from flows.janitor import janitor

    janitor()
    assert leftovers(sid, settings) == []
    assert on_production(production, "test -e /srv/late").returncode == 1
    assert [d.outcome for d in runs.decisions(run_id)] == ["timed-out"]
    rec = runs.get(run_id)
    assert rec is not None and rec.status == "timed-out"


def test_the_janitor_reaps_the_sandbox_of_a_killed_worker(
    production: str, prefect_stack: control_plane.ControlPlane, settings: FluidSettings
) -> None:
    """Worker and flow process die mid-run: the janitor removes the sandbox, the run is Crashed."""
    agent = {"kind": "scripted", "steps": [{"run": "sleep 900"}]}
    fr = run_deployment(
        "agent-task/agent-task",
        parameters={"task": "sleep", "production": production, "agent": agent},
        timeout=0,
    )

    def agent_started() -> str | None:
        rec = runs.get(str(fr.id))
        return rec.sandbox_id if rec and rec.sandbox_id and rec.status == "working" else None

    sid = wait_for(agent_started, 600, "the agent to start working")
    owner_pid = sandbox_records.record(sid, settings).owner_pid
    assert owner_pid
    pid_file, _log = control_plane.worker_files(settings, host_id(settings))
    worker_pid = int(pid_file.read_text())
    try:
        os.killpg(worker_pid, signal.SIGKILL)
        os.kill(owner_pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{owner_pid}").exists(), 30, "the flow process to die")
        assert sandboxes.get(sid, settings).state == "running"

        from flows.janitor import janitor

        report = janitor()
        reaped = {x.sandbox_id: x for x in report.reaped}
        assert sid in reaped and reaped[sid].owner_dead
        assert leftovers(sid, settings) == []
        state = read_run(fr.id).state
        assert state is not None and state.is_crashed()
    finally:
        control_plane.start_worker(settings)


def test_auth_string_is_required_for_the_api(prefect_stack: control_plane.ControlPlane) -> None:
    """The local API answers health checks to anyone, everything else only with the string."""
    assert urllib.request.urlopen(f"{prefect_stack.api_url}/health", timeout=10).status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{prefect_stack.api_url}/admin/version", timeout=10)
    assert e.value.code == 401
    token = base64.b64encode(prefect_stack.auth_string.get_secret_value().encode()).decode()
    req = urllib.request.Request(
        f"{prefect_stack.api_url}/admin/version", headers={"Authorization": f"Basic {token}"}
    )
    assert urllib.request.urlopen(req, timeout=10).status == 200
    mode = (FluidSettings().prefect_dir / "auth-string").stat().st_mode & 0o777
    assert mode == 0o600


HELLO_UNIT = (
    "[Unit]\nDescription=fluid's hello page\n\n[Service]\n"
    "ExecStart=/usr/bin/python3 -m http.server 8080 --bind 127.0.0.1 "
    "--directory /srv/hello-web\n\n[Install]\nWantedBy=multi-user.target\n"
)
# The model's turns: install a package, write the page and its unit, start it, finish.
HELLO_MODEL = [
    Assistant(
        content="First the package.",
        tool_calls=[
            (
                "run_command",
                {"command": "apt-get update -qq && apt-get install -y -qq tree", "timeout": 900},
            )
        ],
    ),
    Assistant(
        tool_calls=[
            (
                "write_file",
                {"path": "/srv/hello-web/index.html", "content": "<h1>Hello from fluid</h1>\n"},
            ),
            (
                "write_file",
                {"path": "/etc/systemd/system/hello-web.service", "content": HELLO_UNIT},
            ),
        ]
    ),
    Assistant(
        tool_calls=[
            (
                "run_command",
                {"command": "systemctl daemon-reload && systemctl enable --now hello-web"},
            )
        ]
    ),
    Assistant(tool_calls=[("finish", {"summary": "tree installed; hello-web serves on 8080"})]),
]
UI_TASK = "install tree and serve a hello page on port 8080"


@pytest.fixture
def hello_model() -> Iterator[ChatServer]:
    with ChatServer(list(HELLO_MODEL)) as server:
        yield server


def test_a_reviewer_approves_in_the_prefect_ui(
    production: str,
    prefect_stack: control_plane.ControlPlane,
    settings: FluidSettings,
    hello_model: ChatServer,
    tmp_path: Path,
) -> None:
    """An LLM agent (a saved LLM block; the model is a local server playing scripted turns)
    installs a package and a service; called from Python, the run pauses; a person approves it
    in the UI; production has the package and serves the page."""
    from tests import prefect_ui, prefect_ui_blocks

    shots = Path(os.environ.get("FLUID_TEST_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    # The LLM block is made in the UI's form, as the README tells a new user to; the run loads it.
    with prefect_ui.browser(shots) as page:
        prefect_ui.login(page, prefect_stack.ui_url, prefect_stack.auth_string.get_secret_value())
        prefect_ui_blocks.create_block(
            page,
            prefect_stack.ui_url,
            "fluid-llm-endpoint",
            "t-llm",
            {"Base Url": hello_model.url, "Model": "test-model"},
            shots,
        )
        prefect_ui_blocks.wait_for_block(page, "fluid-llm-endpoint", "t-llm")
    script = (
        "import json, sys\n"
        "from flows.agent_task import agent_task\n"
        "state = agent_task(task=sys.argv[1], production=sys.argv[2], "
        "agent=json.loads(sys.argv[3]), return_state=True)\n"
        "print('STATE', state.type.value)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, UI_TASK, production, json.dumps("t-llm")],
        cwd=ROOT,
        # The user's path end to end: replay, preview and apply under Ansible's default
        # strategy (the session's other runs use Mitogen, tests/conftest.py).
        env={**os.environ, "FLUID_ANSIBLE_STRATEGY": "linear"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def paused_run() -> str | None:
            with store.session(settings) as s:
                rec = s.exec(
                    select(store.AgentRunRecord).where(store.AgentRunRecord.task == UI_TASK)
                ).first()
            if rec is None or rec.status != "awaiting-approval":
                assert proc.poll() is None, proc.communicate()[0][-3000:]
                return None
            fr = read_run(rec.flow_run_id)
            return rec.flow_run_id if fr.state is not None and fr.state.is_paused() else None

        run_id = wait_for(paused_run, 900, "the run to wait for approval")
        sid = sandbox_of(run_id)
        assert on_production(production, "test -e /srv/hello-web").returncode == 1
        rec = runs.get(run_id)
        assert rec is not None and rec.digest

        with prefect_ui.browser(shots) as page:
            prefect_ui.login(
                page, prefect_stack.ui_url, prefect_stack.auth_string.get_secret_value()
            )
            artifacts = prefect_ui.read_artifacts_text(
                page,
                prefect_stack.ui_url,
                run_id,
                shots,
                expect=["/etc/systemd/system/hello-web.service", "Check-mode preview", "tree"],
            )
            # Both bundled UIs show the form naming this playbook's digest, filled in.
            for ui in ("v2", "v1"):
                form = prefect_ui.read_resume_form(
                    page,
                    prefect_stack.ui_url,
                    run_id,
                    shots,
                    ui=ui,
                    expect_description=["Approve this change", rec.digest],
                )
                assert form.values["Digest"] == rec.digest, (ui, form.values)
                assert form.values["Decision"] == "reject", (ui, form.values)
            # The reviewer confirms the digest the form names (a field no one can change).
            result = prefect_ui.approve_waiting_run(
                page,
                prefect_stack.ui_url,
                run_id,
                {
                    "decision": "approve",
                    "digest": rec.digest,
                    "approver": "dana",
                    "comment": "approved in the UI",
                },
                shots,
                expect_description=["Approve this change", "Playbook digest"],
            )
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "STATE COMPLETED" in out, out[-3000:]
    if result.resubmits:
        warnings.warn(
            f"the Prefect server answered the UI's resume with 503 {result.resubmits} time(s); "
            "submitted again",
            stacklevel=1,
        )
    hello_model.check()
    assert len(hello_model.requests) == len(HELLO_MODEL)
    assert "authorization" not in hello_model.requests[0].headers  # the block has no key
    assert on_production(production, "dpkg-query -W -f '${Status}' tree").stdout == (
        b"install ok installed"
    )
    # The check-mode preview ran into the service that only the earlier tasks would create,
    # and the run went on.
    assert "with errors" in artifacts
    assert rec.digest in result.description_text
    page_body = on_production(
        production,
        "python3 -c 'import urllib.request as u; "
        'print(u.urlopen("http://127.0.0.1:8080/").read().decode())\'',
    )
    assert "Hello from fluid" in page_body.stdout.decode(), page_body
    assert on_production(production, "systemctl is-enabled hello-web").stdout == b"enabled\n"
    decided = runs.decisions(run_id)
    assert [(d.outcome, d.approver, d.comment) for d in decided] == [
        ("approved", "dana", "approved in the UI")
    ]
    # Called from Python, not submitted by `fluid run`: the run still bears fluid's tags.
    assert {f"production:{production}", "agent:llm", f"host:{host_id()}"} <= set(
        read_run(run_id).tags
    )
    assert leftovers(sid, settings) == []
    assert sorted(p.name for p in shots.glob("*.png")), "screenshots are kept as test outputs"


def test_deployments_are_scheduled_and_the_image_flow_runs(
    prefect_stack: control_plane.ControlPlane,
) -> None:
    """prefect.yaml's deployments exist with their defaults and schedules; golden-image runs."""
    with get_client(sync_client=True) as client:
        agent = client.read_deployment_by_name("agent-task/agent-task")
        assert agent.parameters["production"] == "demo"
        assert agent.parameters["agent"]["steps_file"] == "examples/hello-nginx.yaml"
        schedules = {
            name: [s.schedule.cron for s in client.read_deployment_by_name(name).schedules]
            for name in ("janitor/janitor", "golden-image/golden-image")
        }
    # The janitor template is unscheduled; each host's copy (janitor-<host id>) runs every 10
    # minutes on its queue (tests/orchestration/test_control_plane.py checks it).
    assert schedules == {"janitor/janitor": [], "golden-image/golden-image": ["0 3 * * 0"]}
    # Without refresh, an up-to-date image is kept: the run proves the deployment works.
    fr = run_deployment("golden-image/golden-image", parameters={"refresh": False}, timeout=0)
    final = wait_final(fr.id, timeout=600)
    assert final.state is not None and final.state.is_completed(), final.state


def test_bad_run_input_fails_before_any_run_or_vm_exists(
    prefect_stack: control_plane.ControlPlane, settings: FluidSettings, tmp_path
) -> None:
    """A missing steps file, malformed steps, an unknown production, incomplete LLM options:
    clear errors, nothing made."""
    good = tmp_path / "good.yml"
    good.write_text('- run: "true"\n')
    bad = tmp_path / "bad.yml"
    bad.write_text('- run: "true"\n  write: /etc/x\n')
    before = sandboxes.list_sandboxes(settings).sandboxes
    cases = [
        (["--steps", str(tmp_path / "missing.yml"), "--production", "x"], b"cannot read steps"),
        (["--steps", str(bad), "--production", "x"], b"exactly one of `run` or `write`"),
        (["--steps", str(good), "--production", "nope"], b"no ProductionTarget block named 'nope'"),
        (["--production", "x"], b"say who does the work"),
        (["--llm-base-url", "http://127.0.0.1:9/v1", "--production", "x"], b"--llm-model NAME"),
        (["--steps", str(good), "--llm-block", "b", "--production", "x"], b"not both"),
        (
            ["--llm-block", "b", "--llm-api-key-env", "FLUID_UNSET_VAR", "--production", "x"],
            b"FLUID_UNSET_VAR is not set",
        ),
    ]
    for args, message in cases:
        r = fluid("run", "a task", *args, check=False)
        assert r.returncode == 1 and message in r.stderr, r.stderr
        assert b"run id:" not in r.stdout
    assert sandboxes.list_sandboxes(settings).sandboxes == before
