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
    _configure_prefect(cp)
    return 0


def _configure_prefect(cp) -> None:  # noqa: ANN001 - a ControlPlane, imported lazily
    """Profile "fluid" made active (plain `prefect` commands talk to this server) and the
    approval notification set up; imports Prefect, so only once the server is up."""
    from orchestration import automations, profile

    path = profile.write(cp)
    print(f"Prefect profile {profile.PROFILE!r} is active (in {path}): `prefect` commands use it")
    automations.configure(cp, log)


def cmd_server_env(args: argparse.Namespace) -> int:
    """Print shell exports that point Prefect at the local server (e.g. `eval "$(...)"`)."""
    from orchestration import control_plane, profile

    print(profile.exports(control_plane.local()), end="")
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
    """`fluid server start|stop|status|env`."""
    server = add_noun(
        top,
        "server",
        "the local Prefect server and worker",
        examples=(
            "fluid server start",
            "fluid server status --json",
            'eval "$(fluid server env)"',
            "fluid server stop",
        ),
    )
    add_command(server, "start", cmd_server_start, "start server, worker and deployments", False)
    add_command(server, "stop", cmd_server_stop, "stop the local worker and server", False)
    add_command(server, "status", cmd_server_status, "is the local server up?")
    add_command(
        server,
        "env",
        cmd_server_env,
        'print the exports that point Prefect at the local server: eval "$(fluid server env)"',
        False,
    )
