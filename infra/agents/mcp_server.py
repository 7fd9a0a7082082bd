"""`fluid mcp SANDBOX`: the agent's tools served over MCP on stdio, for an outside agent.

An MCP client (Claude Desktop, an IDE, any agent framework) starts `fluid mcp SANDBOX` as a
subprocess and gets the same seven tools fluid's own agents use (infra/agents/tools.py), under
the same guardrails and audited with actor "mcp". stdout carries only the protocol; every log
line (each call with its result, command output as it streams) goes to stderr.

`finish` records the summary and is logged, but the server goes on serving: an MCP client
decides when its session ends (it closes stdin), so calls after `finish` work as before.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from pydantic import ValidationError

from infra.agents.tools import BudgetExhausted, Toolbox, ToolResult
from infra.agents.yaml_files import read_yaml
from infra.errors import FluidError, SandboxNotRunning
from infra.guardrails.policy import Guardrails
from infra.machines import sandboxes
from infra.settings import FluidSettings

ACTOR = "mcp"
T = TypeVar("T")


class GuardrailsFileError(FluidError, ValueError):
    """A guardrails file is missing, not YAML/JSON, or does not describe valid guardrails."""


def _say(line: str) -> None:
    # stdout is the protocol; anything for a human goes to stderr.
    print(line, file=sys.stderr, flush=True)


def load_guardrails(path: Path) -> Guardrails:
    """Guardrails from a YAML or JSON file of Guardrails fields (unknown keys are refused)."""
    data = read_yaml(path, "guardrails file", GuardrailsFileError, formats="YAML or JSON")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GuardrailsFileError(
            f"guardrails file {path} must hold a mapping of settings "
            f"({', '.join(Guardrails.model_fields)}), not a {type(data).__name__}"
        )
    # A misspelt key would silently leave a default in force; refuse it instead.
    unknown = sorted(set(map(str, data)) - set(Guardrails.model_fields))
    if unknown:
        raise GuardrailsFileError(
            f"guardrails file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(Guardrails.model_fields)}"
        )
    try:
        return Guardrails.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(_problem(err) for err in e.errors())
        raise GuardrailsFileError(f"guardrails file {path} is invalid: {problems}") from e


def _problem(err: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc = ".".join(map(str, err["loc"]))
    return f"{loc}: {msg}" if loc else msg


def check_running(sandbox_id: str, settings: FluidSettings) -> sandboxes.Sandbox:
    """The sandbox, if it exists and runs; SandboxNotFound or SandboxNotRunning otherwise."""
    sb = sandboxes.get(sandbox_id, settings)
    what_to_do = {
        "shut off": f"start it with `fluid sandbox start {sandbox_id}`",
        # A checkpoint pauses the VM while it saves memory; it resumes by itself.
        "paused": "wait until it runs again (a checkpoint in progress pauses it) or resume it "
        f"with `virsh resume {sb.domain_name}`",
        "missing": f"its VM is gone; `fluid sandbox destroy {sandbox_id}` and create a new one",
    }
    if sb.state != "running":
        raise SandboxNotRunning(
            f"sandbox {sandbox_id} is {sb.state}, so there is nothing to serve over MCP; "
            f"{what_to_do.get(sb.state, 'it must be running')}"
        )
    return sb


def _instructions(sb: sandboxes.Sandbox) -> str:
    return (
        f"You work as root in fluid sandbox {sb.id}, a throwaway VM cloned from the golden "
        f"image {sb.image} {sb.image_version}. Everything you change there is recorded, "
        "turned into an Ansible playbook and applied to production only after a human "
        "approves it, so prefer declarative, reproducible changes (packages, config files, "
        "services) over one-off state. Commands run in a persistent bash shell. Some "
        "commands and paths are refused by guardrails; the error says why. Call "
        "finish(summary) when the work is done."
    )


def build_server(
    toolbox: Toolbox,
    run: Callable[[Callable[[], Any]], Awaitable[Any]],
    *,
    instructions: str | None = None,
) -> Server:
    """An MCP server whose tools are the toolbox's; `run(fn)` awaits fn off the event loop."""

    async def list_tools(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=s.name, description=s.description, input_schema=s.parameters)
                for s in toolbox.specs
            ]
        )

    async def call_tool(
        ctx: ServerRequestContext, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = params.arguments or {}
        try:
            result: ToolResult = await run(lambda: toolbox.call(params.name, arguments))
        except BudgetExhausted as e:
            # Every further call is refused the same way; the client sees why.
            return _error(f"budget exhausted: {e}")
        except FluidError as e:
            # The sandbox itself failed (stopped, SSH gone): tell the client, keep serving.
            return _error(f"{params.name} failed: {e}")
        if params.name == "finish" and result.ok:
            _say(f"agent finished: {toolbox.finished}")
        return types.CallToolResult(
            content=[types.TextContent(text=result.content)], is_error=not result.ok
        )

    try:
        fluid_version = version("fluid")
    except PackageNotFoundError:
        fluid_version = "0"
    return Server(
        "fluid",
        version=fluid_version,
        title=f"fluid sandbox {toolbox.sandbox_id}",
        instructions=instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def serve(
    sandbox_id: str, *, settings: FluidSettings, guardrails: Guardrails | None = None
) -> None:
    """Serve the sandbox's tools over MCP on stdin/stdout until the client closes stdin."""
    sb = check_running(sandbox_id, settings)
    # One thread owns the toolbox (its SSH connections and shell), so calls run one at a time
    # in order, and the event loop stays free for the protocol while a command runs.
    worker = ThreadPoolExecutor(1, thread_name_prefix="fluid-mcp-tools")
    try:
        toolbox = worker.submit(
            Toolbox, sandbox_id, settings=settings, guardrails=guardrails, actor=ACTOR, say=_say
        ).result()
        try:

            async def run(fn: Callable[[], T]) -> T:
                return await asyncio.wrap_future(worker.submit(fn))

            server = build_server(toolbox, run, instructions=_instructions(sb))
            _say(f"fluid: serving sandbox {sandbox_id} over MCP on stdio (tools audited as mcp)")

            async def main() -> None:
                async with stdio_server() as (read_stream, write_stream):
                    await server.run(
                        read_stream, write_stream, server.create_initialization_options()
                    )

            anyio.run(main, backend="asyncio")
        finally:
            worker.submit(toolbox.close).result()
    finally:
        worker.shutdown()
