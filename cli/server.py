"""`fluid server`: the local Prefect server and worker, and how other commands reach Prefect.
Calls orchestration.control_plane; imports no Prefect module itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.args import add_command, add_noun
from cli.output import emit, log


def use_prefect() -> None:
    """Point Prefect at fluid's API (starting the local server and worker if needed)."""
    from orchestration import control_plane

    control_plane.use_prefect(progress=log)


def auth_path() -> Path:
    """The file holding the local Prefect UI's password."""
    from infra.settings import get_settings

    return get_settings().prefect_dir / "auth-string"


def cmd_server_start(args: argparse.Namespace) -> int:
    """Start server, worker and deployments; print where the UI is."""
    from orchestration import control_plane

    cp = control_plane.ensure_running(progress=log)
    print(f"Prefect UI: {cp.ui_url} (password: the string in {auth_path()})")
    return 0


def cmd_server_stop(args: argparse.Namespace) -> int:
    """Stop the local worker and server."""
    from orchestration import control_plane

    control_plane.stop(progress=log)
    return 0


def cmd_server_status(args: argparse.Namespace) -> int:
    """Say whether the local server is up."""
    from orchestration import control_plane

    st = control_plane.status()
    emit(args, st, lambda: print("\n".join(f"{k}: {v}" for k, v in st.items())))
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid server start|stop|status`."""
    server = add_noun(
        top,
        "server",
        "the local Prefect server and worker",
        examples=("fluid server start", "fluid server status --json", "fluid server stop"),
    )
    add_command(server, "start", cmd_server_start, "start server, worker and deployments", False)
    add_command(server, "stop", cmd_server_stop, "stop the local worker and server", False)
    add_command(server, "status", cmd_server_status, "is the local server up?")
