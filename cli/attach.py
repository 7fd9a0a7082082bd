"""`fluid attach`: watch (or take over) the agent's shell in a sandbox. Never imports Prefect."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from cli.args import add_session_command
from cli.output import log


def cmd_attach(args: argparse.Namespace) -> int:
    """Attach to the agent's tmux session over ssh; ssh's exit status."""
    import subprocess

    from infra.machines import sandboxes
    from infra.transport import tmux_session

    # Not exec: the certificate's private key stays on disk only while ssh runs.
    with tempfile.TemporaryDirectory(prefix="fluid-attach-") as tmp:
        ssh_argv = sandboxes.ssh_argv(args.sandbox, Path(tmp))
        argv = tmux_session.attach_argv(ssh_argv, read_write=args.rw)
        if sys.stdin.isatty():
            mode = "taking over (your keys go to the agent's shell)" if args.rw else "read-only"
            log(f"fluid: attaching to the agent's shell in {args.sandbox}, {mode}; C-b d detaches")
        return subprocess.call(argv)


def register(top: argparse._SubParsersAction) -> None:
    """`fluid attach SANDBOX [--rw]`."""
    sp = add_session_command(
        top,
        "attach",
        cmd_attach,
        "watch the agent's shell in a sandbox live (tmux over ssh; C-b d detaches)",
        examples=("fluid attach web", "fluid attach web --rw"),
    )
    sp.add_argument(
        "--rw", action="store_true", help="take over: type into the agent's shell (default: watch)"
    )
