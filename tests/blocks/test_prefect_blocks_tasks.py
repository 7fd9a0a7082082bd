"""fluid's Prefect blocks and its destroy task against a real Prefect server (no VM)."""

import os

# Before Prefect is imported: its settings are read once, and nothing may leave loopback.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
# A task called outside any flow has no flow run to attach its logs to; that is expected here.
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from uuid import UUID  # noqa: E402

import pytest  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.objects import TaskRun  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402

from blocks import ProductionTarget  # noqa: E402
from infra.errors import SandboxNotFound  # noqa: E402
from infra.settings import FluidSettings  # noqa: E402
from tasks.sandbox import destroy_sandbox  # noqa: E402
from tests.repo import ROOT  # noqa: E402

REPO = ROOT
BLOCK_SLUGS = ("fluid-production-target", "fluid-llm-endpoint", "fluid-guardrails")


@pytest.fixture(scope="module")
def prefect_api(prefect_stack) -> str:
    """The session's real Prefect server (with its auth string); returns its API URL."""
    return prefect_stack.api_url


def _prefect_cli(api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "PREFECT_API_URL": api_url,
        # Rich wraps and truncates tables to the terminal width; keep slugs whole.
        "COLUMNS": "250",
    }
    return subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_blocks_register_and_secrets_are_stored_as_secret_fields(prefect_api: str) -> None:
    registered = _prefect_cli(prefect_api, "block", "register", "-m", "blocks")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert "Successfully registered 3 blocks" in registered.stdout

    listed = _prefect_cli(prefect_api, "block", "type", "ls")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    with get_client(sync_client=True) as client:
        for slug in BLOCK_SLUGS:
            assert slug in listed.stdout
            block_type = client.read_block_type_by_slug(slug)
            assert block_type.slug == slug
            assert block_type.description
    with get_client(sync_client=True) as client:
        schema = client.read_block_schema_by_checksum(ProductionTarget._calculate_schema_checksum())
    assert schema.fields["secret_fields"] == ["private_key"]


def test_destroying_a_missing_sandbox_fails_with_sandbox_not_found(
    prefect_api: str, tmp_path: Path
) -> None:
    settings = FluidSettings(home=tmp_path)
    state = destroy_sandbox("no-such-sandbox", settings=settings, return_state=True)
    assert state.is_failed()
    assert "SandboxNotFound" in (state.message or "")
    assert "no-such-sandbox" in (state.message or "")
    assert isinstance(state.result(raise_on_failure=False), SandboxNotFound)
    # A missing sandbox is not transient: the task must not have waited out its retries.
    assert _task_run(state.state_details.task_run_id).run_count == 1


def _task_run(task_run_id: UUID, timeout_s: float = 30.0) -> TaskRun:
    """The server's record of a task run. Prefect 3 sends task runs to the server as events,
    written asynchronously, so the record may lag the task's end by a moment."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                return client.read_task_run(task_run_id)
            except ObjectNotFound:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
