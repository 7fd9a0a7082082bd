"""`fluid mcp`: serve a sandbox's agent tools over MCP on stdio. Never imports Prefect."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.args import add_session_command


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve the tools until the client hangs up; a bad guardrails file is refused first."""
    from infra.agents import mcp_server
    from infra.settings import get_settings

    # A bad file is refused before anything is served.
    guardrails = mcp_server.load_guardrails(Path(args.guardrails)) if args.guardrails else None
    mcp_server.serve(args.sandbox, settings=get_settings(), guardrails=guardrails)
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid mcp SANDBOX [--guardrails FILE]`."""
    sp = add_session_command(
        top,
        "mcp",
        cmd_mcp,
        "serve a sandbox's agent tools over MCP on stdio (for an outside agent)",
        examples=("fluid mcp web", "fluid mcp web --guardrails ./guardrails.yaml"),
    )
    sp.add_argument(
        "--guardrails", default=None, metavar="FILE", help="YAML or JSON file (default: built in)"
    )
