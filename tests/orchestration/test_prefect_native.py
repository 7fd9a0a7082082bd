"""fluid on a real Prefect server as a Prefect user meets it: fluid's block types in the
catalog, one profile that plain `prefect` commands use, and a notification when a run waits
for approval (no VM: runs are created from the deployment and their states set by hand)."""

from __future__ import annotations

import http.server
import json
import os
import queue
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestration import block_types, profile
from orchestration.prefect_api import ControlPlane

PREFECT = str(Path(sys.executable).with_name("prefect"))
FLUID = [sys.executable, "-m", "cli"]
REPO = Path(__file__).resolve().parents[2]


def _env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """This session's environment without any Prefect API setting: only a profile (or
    exports) can point a command at fluid's server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return env | {"PREFECT_HOME": str(prefect_home), "COLUMNS": "250", **extra}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{argv} failed:\n{r.stdout}\n{r.stderr}"
    return r


# --- blocks -------------------------------------------------------------------------------


def test_fluid_block_types_are_registered_when_the_server_starts(
    prefect_stack: ControlPlane,
) -> None:
    from prefect.client.orchestration import get_client

    from blocks import GuardrailsBlock, LLMBlock, ProductionTarget
    from blocks.docs import README_URL

    classes = (ProductionTarget, LLMBlock, GuardrailsBlock)
    assert sorted(c.get_block_type_slug() for c in classes) == sorted(block_types.SLUGS)
    assert block_types.missing(prefect_stack) == []
    with get_client(sync_client=True) as client:
        for cls in classes:
            bt = client.read_block_type_by_slug(cls.get_block_type_slug())
            assert bt.name.startswith("fluid "), bt.name
            assert bt.description
            assert str(bt.documentation_url).startswith(README_URL + "#")


def test_a_block_saved_under_a_type_name_from_before_the_rename_still_loads(
    prefect_stack: ControlPlane,
) -> None:
    from blocks.legacy import load_saved
    from blocks.llm import LLMBlock

    class OldLLMEndpoint(LLMBlock):
        _block_type_name = "LLM Endpoint"  # the name (slug llm-endpoint) before "fluid …"

    OldLLMEndpoint(base_url="http://127.0.0.1:9/v1", model="old-model").save(
        "t-legacy-llm", overwrite=True
    )
    loaded = load_saved(LLMBlock, "t-legacy-llm")
    assert type(loaded) is LLMBlock
    assert loaded.model == "old-model"
    with pytest.raises(ValueError):
        load_saved(LLMBlock, "t-no-such-llm")


# --- profile ------------------------------------------------------------------------------


def test_server_start_makes_an_active_profile_that_prefect_commands_use(
    prefect_stack: ControlPlane, tmp_path: Path
) -> None:
    from blocks import GuardrailsBlock

    GuardrailsBlock(max_tool_calls=17).save("t-profile-guardrails", overwrite=True)
    home = tmp_path / "prefect-home"
    env = _env(home)

    started = _run([*FLUID, "server", "start"], env)
    assert "profile 'fluid' is active" in started.stdout

    profiles = home / "profiles.toml"
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600  # it holds the auth string
    listed = _run([PREFECT, "block", "ls"], env)
    assert "fluid-guardrails/t-profile-guardrails" in listed.stdout
    assert "* fluid" in _run([PREFECT, "profile", "ls"], env).stdout
    # The README's Python snippets go to fluid's server the same way.
    loaded = _run(
        [
            sys.executable,
            "-c",
            "from blocks import GuardrailsBlock; "
            "print(GuardrailsBlock.load('t-profile-guardrails').max_tool_calls)",
        ],
        env | {"PYTHONPATH": str(REPO)},
    )
    assert loaded.stdout.strip() == "17"

    # Again: updated in place, other profiles kept.
    _run([PREFECT, "profile", "create", "mine"], env)
    _run([*FLUID, "server", "start"], env)
    names = _run([PREFECT, "profile", "ls"], env).stdout
    assert "mine" in names and "* fluid" in names


def test_server_env_prints_exports_another_shell_can_eval(
    prefect_stack: ControlPlane, tmp_path: Path
) -> None:
    from blocks import GuardrailsBlock

    GuardrailsBlock().save("t-env-guardrails", overwrite=True)
    env = _env(tmp_path / "no-profile-here")
    printed = _run([*FLUID, "server", "env"], env).stdout
    assert printed.startswith(f"export PREFECT_API_URL={prefect_stack.api_url}\n")
    assert "export PREFECT_API_AUTH_STRING=" in printed
    fluid = " ".join(FLUID)
    listed = _run(["bash", "-c", f'eval "$({fluid} server env)" && {PREFECT} block ls'], env)
    assert "fluid-guardrails/t-env-guardrails" in listed.stdout
    # Without the exports (and no profile) Prefect does not know fluid's server.
    bare = subprocess.run(
        [PREFECT, "block", "ls"], env=env, capture_output=True, text=True, timeout=300
    )
    assert "t-env-guardrails" not in bare.stdout


# --- approval notification ----------------------------------------------------------------


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, queue.Queue[dict]]]:
    """An HTTP server on 127.0.0.1 that queues the JSON body of every POST; its URL."""
    received: queue.Queue[dict] = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.put(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


@pytest.mark.parametrize("waiting_state", ["Suspended", "Paused"])
def test_a_run_waiting_for_approval_notifies_the_configured_block(
    prefect_stack: ControlPlane,
    webhook_receiver: tuple[str, queue.Queue[dict]],
    waiting_state: str,
) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.states import Paused, Scheduled, Suspended

    from infra.settings import FluidSettings
    from orchestration import automations
    from orchestration.client import DEPLOYMENT
    from orchestration.run_labels import run_name, run_tags

    url, received = webhook_receiver
    CustomWebhookNotificationBlock(
        name="fluid approvals",
        url=url,
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save("t-approvals", overwrite=True)
    settings = FluidSettings(approval_notify="custom-webhook/t-approvals")
    automations.configure(prefect_stack, lambda _m: None, settings)
    automations.configure(prefect_stack, lambda _m: None, settings)  # idempotent

    params = {"task": "install nginx", "production": "web", "agent": "some-llm"}
    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name(automations.NAME)) == 1
        dep = client.read_deployment_by_name(DEPLOYMENT)
        # Scheduled a day ahead: no worker takes it; the test moves its state by hand.
        fr = client.create_flow_run_from_deployment(
            dep.id,
            parameters=params,
            name=run_name("install nginx", "web"),
            tags=run_tags("web", "some-llm", None),
            state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=1)),
        )
        try:
            waiting = (
                Suspended(timeout_seconds=600)
                if waiting_state == "Suspended"
                else Paused(timeout_seconds=600)
            )
            client.set_flow_run_state(fr.id, waiting, force=True)
            note = received.get(timeout=90)
        finally:
            client.delete_flow_run(fr.id)

    assert note["subject"] == "fluid: web: install nginx waits for approval"
    assert str(fr.id) in note["body"]
    assert f"{prefect_stack.ui_url}/runs/flow-run/{fr.id}" in note["body"]

    automations.configure(prefect_stack, lambda _m: None, FluidSettings(approval_notify=None))
    with get_client(sync_client=True) as client:
        assert client.read_automations_by_name(automations.NAME) == []


def test_a_missing_notification_block_is_named_in_the_error(prefect_stack: ControlPlane) -> None:
    from infra.settings import FluidSettings
    from orchestration import automations

    with pytest.raises(automations.NotificationBlockMissing, match="custom-webhook/t-nothing"):
        automations.configure(
            prefect_stack,
            lambda _m: None,
            FluidSettings(approval_notify="custom-webhook/t-nothing"),
        )


def test_the_profile_file_is_prefects_own_under_this_sessions_prefect_home() -> None:
    # Tests never write the developer's ~/.prefect (tests/conftest.py sets PREFECT_HOME).
    assert profile.profiles_path().parent == Path(os.environ["PREFECT_HOME"])


# --- run names ----------------------------------------------------------------------------


def test_an_agent_task_run_is_named_from_its_target_and_task(prefect_stack: ControlPlane) -> None:
    from prefect.client.orchestration import get_client

    from flows.agent_task import agent_task

    # Placed on another host, the run fails at its first line: no VM, but a named run.
    state = agent_task(
        task="install\x1b[2J nginx\n",
        production="web",
        agent={"kind": "scripted", "steps": []},
        host="t-elsewhere",
        return_state=True,
    )
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == "web: install[2J nginx"
