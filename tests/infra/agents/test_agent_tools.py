"""The agent's seven tools on a real sandbox: results, guardrails, budgets, audit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from infra.agents.tools import BudgetExhausted, Toolbox, tool_specs
from infra.guardrails.policy import Guardrails
from infra.machines import sandboxes
from infra.records import audit
from infra.settings import FluidSettings

pytestmark = pytest.mark.vm

TOOL_NAMES = [
    "run_command",
    "read_file",
    "write_file",
    "list_dir",
    "checkpoint",
    "restore",
    "finish",
]


@pytest.fixture
def tools(agent_box: sandboxes.Sandbox, settings: FluidSettings) -> Iterator[Toolbox]:
    lines: list[str] = []
    with Toolbox(agent_box.id, settings=settings, actor="agent:test", say=lines.append) as box:
        box.log = lines  # type: ignore[attr-defined]
        yield box


def test_the_seven_tools_have_json_schemas() -> None:
    specs = {s.name: s for s in tool_specs()}
    assert list(specs) == TOOL_NAMES
    assert specs["run_command"].parameters["required"] == ["command"]
    assert set(specs["write_file"].parameters["properties"]) == {"path", "content", "mode"}
    assert specs["finish"].parameters["required"] == ["summary"]
    for spec in specs.values():
        assert spec.parameters["type"] == "object" and spec.description


def test_run_command_reports_exit_status_and_output(tools: Toolbox) -> None:
    r = tools.call("run_command", {"command": "echo out; echo err >&2; exit 4"})
    assert r.ok and r.exit_status == 4
    assert "exit status 4" in r.content
    assert "stdout:\nout" in r.content and "stderr:\nerr" in r.content
    # The output streamed into the log as the command ran, and the call was logged.
    assert "out" in tools.log  # type: ignore[attr-defined]
    assert any(line.startswith("tool run_command(") for line in tools.log)  # type: ignore[attr-defined]


def test_write_read_and_list_files(tools: Toolbox) -> None:
    w = tools.call(
        "write_file", {"path": "/srv/tools-test/conf/app.ini", "content": "a=1\n", "mode": "0600"}
    )
    assert w.ok, w.content
    r = tools.call("read_file", {"path": "/srv/tools-test/conf/../conf/app.ini"})
    assert r.ok and r.content == "a=1\n"
    listing = tools.call("list_dir", {"path": "/srv/tools-test/conf"})
    assert listing.ok
    assert listing.content.split() == ["f", "0600", "4", "app.ini"]
    # A rewrite without a mode keeps the file's mode.
    assert tools.call("write_file", {"path": "/srv/tools-test/conf/app.ini", "content": "b"}).ok
    mode = tools.call("run_command", {"command": "stat -c %a /srv/tools-test/conf/app.ini"})
    assert "600" in mode.content
    missing = tools.call("read_file", {"path": "/srv/tools-test/nope"})
    assert not missing.ok and "no such file" in missing.content


def test_mistakes_come_back_as_errors_the_agent_can_fix(tools: Toolbox) -> None:
    assert "there is no tool 'rm'" in tools.call("rm", {"path": "/"}).content
    bad_json = tools.call("run_command", '{"command": "ls"')
    assert not bad_json.ok and "not valid JSON" in bad_json.content
    missing = tools.call("write_file", {"path": "/srv/x"})
    assert not missing.ok and "content: Field required" in missing.content
    extra = tools.call("list_dir", {"path": "/", "recursive": True})
    assert not extra.ok and "recursive" in extra.content
    relative = tools.call("read_file", {"path": "etc/hostname"})
    assert not relative.ok and "absolute" in relative.content


def test_guardrails_refuse_dangerous_calls_and_audit_them(
    tools: Toolbox, agent_box: sandboxes.Sandbox, settings: FluidSettings
) -> None:
    refused = tools.call("run_command", {"command": "cd / && rm -rf /"})
    assert not refused.ok and refused.content.startswith("refused by fluid's guardrails")
    harmless = tools.call("run_command", {"command": 'echo "rm -rf /"'})
    assert harmless.ok and "rm -rf /" in harmless.content
    # A symlink cannot smuggle a write into /boot.
    tools.call("run_command", {"command": "ln -sfn /boot /srv/tools-test-boot"})
    escape = tools.call("write_file", {"path": "/srv/tools-test-boot/evil", "content": "x"})
    assert not escape.ok and "guardrails" in escape.content
    assert tools.call("run_command", {"command": "test -e /boot/evil"}).exit_status == 1
    # The sandbox still works, and the refusals are in the audit trail.
    assert tools.call("run_command", {"command": "true"}).exit_status == 0
    blocked = [
        json.loads(r.detail)["arguments"]
        for r in audit.entries(agent_box.id, settings)
        if r.kind == "tool-blocked" and r.actor == "agent:test"
    ]
    assert {"command": "cd / && rm -rf /"} in blocked
    assert {"path": "/srv/tools-test-boot/evil", "content": "x"} in blocked
    assert audit.verify(settings).ok


def test_budgets_end_the_attempt(agent_box: sandboxes.Sandbox, settings: FluidSettings) -> None:
    rails = Guardrails(max_commands=2, max_tool_calls=5)
    with Toolbox(agent_box.id, settings=settings, guardrails=rails, say=lambda _: None) as box:
        box.call("run_command", {"command": "true"})
        box.call("run_command", {"command": "true"})
        with pytest.raises(BudgetExhausted, match="budget of 2 commands"):
            box.call("run_command", {"command": "true"})


def test_a_command_past_its_timeout_is_killed(tools: Toolbox) -> None:
    r = tools.call("run_command", {"command": "sleep 30", "timeout": 2})
    assert not r.ok and "timed out" in r.content
    assert tools.call("run_command", {"command": "echo alive"}).exit_status == 0


def test_checkpoint_and_restore_undo_the_agents_work(tools: Toolbox) -> None:
    assert tools.call("checkpoint", {"name": "clean"}).ok
    tools.call("run_command", {"command": "mkdir -p /srv/tools-cp && touch /srv/tools-cp/oops"})
    assert tools.call("restore", {"name": "clean"}).ok
    # The connection and the shell come back by themselves after the guest went back in time.
    after = tools.call("run_command", {"command": "test -e /srv/tools-cp/oops"})
    assert after.exit_status == 1
    unknown = tools.call("restore", {"name": "never-made"})
    assert not unknown.ok and "clean" in unknown.content


def test_finish_records_the_summary(tools: Toolbox) -> None:
    assert tools.finished is None
    assert tools.call("finish", {"summary": "did it"}).ok
    assert tools.finished == "did it"
