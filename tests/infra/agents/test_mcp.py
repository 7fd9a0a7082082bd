"""`fluid mcp SANDBOX`: an outside agent lists and calls the sandbox's tools over MCP (stdio).

Every test starts the real `fluid mcp` process with mcp's own stdio client, as an MCP host
(Claude Desktop, an IDE) would, against the real sandbox the agent tests share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import CallToolResult, TextContent

from infra.host.libvirt_host import connect, lookup
from infra.machines import sandboxes
from infra.records import audit
from infra.settings import FluidSettings
from tests.conftest import FLUID, fluid
from tests.repo import ROOT

T = TypeVar("T")
TOOLS = {"run_command", "read_file", "write_file", "list_dir", "checkpoint", "restore", "finish"}
REPO = ROOT


def server_env() -> dict[str, str]:
    """The test session's fluid settings (FLUID_HOME above all) for the server process."""
    return {k: v for k, v in os.environ.items() if k.startswith("FLUID_")}


@asynccontextmanager
async def mcp_session(sandbox_id: str, errlog: Path, *extra: str) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session with a real `fluid mcp SANDBOX` process."""
    params = StdioServerParameters(
        command=FLUID, args=["mcp", sandbox_id, *extra], env=server_env()
    )
    with errlog.open("a") as err:
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write, read_timeout_seconds=300) as session,
        ):
            await session.initialize()
            yield session


def with_session(
    sandbox_id: str, errlog: Path, body: Callable[[ClientSession], Awaitable[T]], *extra: str
) -> T:
    """Run `body` against a fresh `fluid mcp` server and return what it returns."""

    async def main() -> T:
        async with mcp_session(sandbox_id, errlog, *extra) as session:
            return await body(session)

    return anyio.run(main)


def text(result: CallToolResult) -> str:
    assert all(isinstance(c, TextContent) for c in result.content), result.content
    return "".join(c.text for c in result.content)  # type: ignore[union-attr]


# --- without a VM: refusals before anything is served -----------------------------------


def test_the_mcp_command_never_imports_prefect() -> None:
    code = (
        "import sys, cli.main, infra.agents.mcp_server\n"
        "cli.main.build_parser().parse_args(['mcp', 'x'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_unknown_sandbox_is_a_clear_error_and_exit_1() -> None:
    r = fluid("mcp", "no-such-box", check=False)
    assert r.returncode == 1
    assert r.stdout == b""  # nothing that a client could mistake for the protocol
    assert b"fluid: error:" in r.stderr and b"no-such-box" in r.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("deny_commands: [unclosed\n", "not valid YAML or JSON"),
        ("- rm\n- reboot\n", "must hold a mapping"),
        ("max_tool_call: 5\n", "unknown setting(s) max_tool_call"),
        ('{"command_timeout_s": "soon"}', "command_timeout_s"),
        ("deny_commands:\n  - program: rm\n", "needs a reason"),
    ],
    ids=["not-yaml", "a-list", "misspelt-key", "wrong-type", "rule-without-reason"],
)
def test_a_bad_guardrails_file_is_refused_before_serving(
    tmp_path: Path, content: str, says: str
) -> None:
    path = tmp_path / "guardrails.yaml"
    path.write_text(content)
    r = fluid("mcp", "no-such-box", "--guardrails", str(path), check=False)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert str(path) in err and says in err, err


def test_a_missing_guardrails_file_is_refused(tmp_path: Path) -> None:
    r = fluid("mcp", "no-such-box", "--guardrails", str(tmp_path / "nope.yaml"), check=False)
    assert r.returncode == 1
    assert b"cannot read guardrails file" in r.stderr


# --- with a real sandbox ------------------------------------------------------------------


@pytest.fixture
def box(agent_box: sandboxes.Sandbox) -> sandboxes.Sandbox:
    """The session's shared agent sandbox (conftest); these tests work under /root/mcp-tests."""
    return agent_box


@pytest.mark.vm
def test_lists_the_seven_tools_with_their_schemas(box: sandboxes.Sandbox, tmp_path: Path) -> None:
    async def body(s: ClientSession) -> Any:
        return (await s.list_tools()).tools

    tools = {t.name: t for t in with_session(box.id, tmp_path / "err.log", body)}
    assert set(tools) == TOOLS
    for t in tools.values():
        assert t.description and t.input_schema["type"] == "object", t
    run = tools["run_command"].input_schema
    assert run["required"] == ["command"] and run["properties"]["command"]["type"] == "string"
    assert set(tools["write_file"].input_schema["required"]) == {"path", "content"}
    assert tools["finish"].input_schema["required"] == ["summary"]


@pytest.mark.vm
def test_run_command_shows_output_and_exit_status(box: sandboxes.Sandbox, tmp_path: Path) -> None:
    errlog = tmp_path / "err.log"

    async def body(s: ClientSession) -> tuple[CallToolResult, CallToolResult]:
        failing = await s.call_tool(
            "run_command", {"command": "echo to-out; echo to-err >&2; (exit 3)"}
        )
        # The shell persists between calls: a cd and an export stay.
        await s.call_tool(
            "run_command",
            {"command": "mkdir -p /root/mcp-tests/cwd; cd $_; export MCP_SEEN=yes"},
        )
        persisted = await s.call_tool("run_command", {"command": 'echo "$PWD $MCP_SEEN"'})
        return failing, persisted

    failing, persisted = with_session(box.id, errlog, body)
    out = text(failing)
    # A command that fails is a successful tool call: the agent reads its status.
    assert not failing.is_error
    assert "exit status 3" in out and "to-out" in out and "to-err" in out
    assert "exit status 0" in text(persisted) and "/root/mcp-tests/cwd yes" in text(persisted)
    # Each call was logged on stderr (stdout is the protocol, which worked).
    assert "tool run_command" in errlog.read_text()


@pytest.mark.vm
def test_write_file_then_read_file_and_list_dir(
    box: sandboxes.Sandbox, tmp_path: Path, settings: FluidSettings
) -> None:
    content = "grüße from mcp\nline two, no trailing newline"

    async def body(s: ClientSession) -> list[CallToolResult]:
        return [
            await s.call_tool(
                "write_file",
                {"path": "/root/mcp-tests/files/note.txt", "content": content, "mode": "0600"},
            ),
            await s.call_tool("read_file", {"path": "/root/mcp-tests/files/note.txt"}),
            await s.call_tool("list_dir", {"path": "/root/mcp-tests/files"}),
        ]

    wrote, read, listed = with_session(box.id, tmp_path / "err.log", body)
    assert not wrote.is_error and "/root/mcp-tests/files/note.txt" in text(wrote)
    assert not read.is_error and text(read) == content
    assert not listed.is_error
    (entry,) = text(listed).splitlines()
    assert entry.split() == ["f", "0600", str(len(content.encode())), "note.txt"]
    # The guest agrees, seen without the tools.
    r = sandboxes.run(
        box.id,
        "stat -c %a /root/mcp-tests/files/note.txt; cat /root/mcp-tests/files/note.txt",
        settings=settings,
    )
    assert r.stdout == ("600\n" + content).encode()


@pytest.mark.vm
def test_mistakes_come_back_as_tool_errors(box: sandboxes.Sandbox, tmp_path: Path) -> None:
    async def body(s: ClientSession) -> list[CallToolResult]:
        return [
            await s.call_tool("format_disk", {}),
            await s.call_tool("write_file", {"path": "/tmp/x"}),
            await s.call_tool("read_file", {"path": "/no/such/file"}),
        ]

    unknown, missing_arg, no_file = with_session(box.id, tmp_path / "err.log", body)
    assert unknown.is_error and "there is no tool 'format_disk'" in text(unknown)
    assert missing_arg.is_error and "content" in text(missing_arg)
    assert no_file.is_error and "no such file" in text(no_file)


@pytest.mark.vm
def test_a_guardrail_refusal_is_an_error_result_and_the_sandbox_is_unharmed(
    box: sandboxes.Sandbox, tmp_path: Path, settings: FluidSettings
) -> None:
    async def body(s: ClientSession) -> list[CallToolResult]:
        return [
            await s.call_tool("run_command", {"command": "rm -rf /"}),
            await s.call_tool("run_command", {"command": "echo 'rm -rf /'"}),
        ]

    refused, quoted = with_session(box.id, tmp_path / "err.log", body)
    assert refused.is_error and "refused by fluid's guardrails" in text(refused)
    # Parsed, not matched on substrings: the same words as an argument are harmless.
    assert not quoted.is_error and "rm -rf /" in text(quoted)
    r = sandboxes.run(box.id, "ls /etc/os-release /usr/bin/bash", settings=settings)
    assert r.exit_status == 0, r.stderr


@pytest.mark.vm
def test_calls_are_audited_with_actor_mcp(
    box: sandboxes.Sandbox, tmp_path: Path, settings: FluidSettings
) -> None:
    marker = "audit-marker-4711"

    async def body(s: ClientSession) -> None:
        await s.call_tool("run_command", {"command": f"echo {marker}"})
        await s.call_tool("write_file", {"path": f"/root/mcp-tests/{marker}", "content": marker})
        await s.call_tool("read_file", {"path": f"/root/mcp-tests/{marker}"})
        await s.call_tool("list_dir", {"path": "/root/mcp-tests"})
        await s.call_tool("run_command", {"command": f"rm -rf / {marker}"})

    with_session(box.id, tmp_path / "err.log", body)
    records = [e for e in audit.entries(box.id, settings=settings) if e.actor == "mcp"]
    mine = [
        (e.kind, json.loads(e.detail)["tool"])
        for e in records
        if e.kind.startswith("tool-") and (marker in e.summary or e.summary.startswith("list_dir"))
    ]
    assert ("tool-call", "run_command") in mine
    assert ("tool-call", "write_file") in mine
    assert ("tool-call", "read_file") in mine
    assert ("tool-call", "list_dir") in mine
    assert ("tool-blocked", "run_command") in mine
    # The command itself, with its exit status, as every command run in a sandbox is.
    assert any(e.kind == "command" and f"echo {marker}" in e.summary for e in records)
    assert audit.verify(settings).ok


@pytest.mark.vm
def test_calls_after_finish_still_work(box: sandboxes.Sandbox, tmp_path: Path) -> None:
    errlog = tmp_path / "err.log"

    async def body(s: ClientSession) -> tuple[CallToolResult, CallToolResult]:
        done = await s.call_tool("finish", {"summary": "nothing to do, all checked"})
        after = await s.call_tool("run_command", {"command": "echo still-here"})
        return done, after

    done, after = with_session(box.id, errlog, body)
    assert not done.is_error
    assert not after.is_error and "still-here" in text(after)
    assert "agent finished: nothing to do, all checked" in errlog.read_text()


@pytest.mark.vm
def test_a_guardrails_file_replaces_the_defaults(box: sandboxes.Sandbox, tmp_path: Path) -> None:
    rules = tmp_path / "guardrails.yaml"
    rules.write_text(
        "deny_commands:\n"
        "  - program: hostname\n"
        "    reason: the name is none of the agent's business\n"
        "write_roots: [/root/mcp-tests/allowed]\n"
    )

    async def body(s: ClientSession) -> list[CallToolResult]:
        return [
            await s.call_tool("run_command", {"command": "hostname"}),
            await s.call_tool("write_file", {"path": "/root/mcp-tests/outside", "content": "x"}),
            await s.call_tool(
                "write_file", {"path": "/root/mcp-tests/allowed/inside", "content": "x"}
            ),
        ]

    hostname, outside, inside = with_session(
        box.id, tmp_path / "err.log", body, "--guardrails", str(rules)
    )
    assert hostname.is_error and "none of the agent's business" in text(hostname)
    assert outside.is_error and "refused by fluid's guardrails" in text(outside)
    assert not inside.is_error


@pytest.mark.vm
def test_a_sandbox_that_is_not_running_is_refused(
    box: sandboxes.Sandbox, settings: FluidSettings
) -> None:
    # Paused for a moment rather than stopped: the sandbox is shared and a boot costs a minute.
    conn = connect(settings)
    try:
        dom = lookup(conn, box.domain_name)
        assert dom is not None
        dom.suspend()
        try:
            r = fluid("mcp", box.id, check=False)
        finally:
            dom.resume()
    finally:
        conn.close()
    assert r.returncode == 1
    assert r.stdout == b""
    assert f"sandbox {box.id} is paused".encode() in r.stderr
    assert f"virsh resume {box.domain_name}".encode() in r.stderr
