"""`fluid sandbox`: sandbox VMs and their checkpoints. Calls infra/ directly and never imports
Prefect, so these commands start fast."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cli.args import add_command, add_noun
from cli.output import dump_all, emit, emit_line, log, print_orphans, print_table, run_exec


def cmd_sandbox_create(args: argparse.Namespace) -> int:
    """Create a sandbox and wait for SSH."""
    from infra.machines import sandboxes

    sb = sandboxes.create(
        args.name, image=args.image, network=args.network, agent_id=args.agent, progress=log
    )
    emit_line(args, sb, f"{sb.id} ready: ssh port {sb.ssh_port} (fluid sandbox ssh {sb.id})")
    return 0


def cmd_sandbox_list(args: argparse.Namespace) -> int:
    """List sandboxes and orphans."""
    from infra.machines import sandboxes

    listing = sandboxes.list_sandboxes()

    def human() -> None:
        print_table(
            "{:<20} {:<9} {:>5}  {:<8} {:<16} {}",
            ("ID", "STATE", "PORT", "NETWORK", "IMAGE", "EXPIRES"),
            (
                (
                    s.id,
                    s.state,
                    s.ssh_port,
                    s.network,
                    s.image + " " + s.image_version,
                    f"{s.expires_at:%Y-%m-%d %H:%M}",
                )
                for s in listing.sandboxes
            ),
        )
        print_orphans(listing)

    emit(args, listing, human)
    return 0


def cmd_sandbox_exec(args: argparse.Namespace) -> int:
    """Run a command as root: its output byte for byte, its exit status."""
    from infra.machines import sandboxes

    return run_exec(
        args, "fluid sandbox exec ID", lambda cmd: sandboxes.run(args.id, cmd, timeout=args.timeout)
    )


def cmd_sandbox_ssh(args: argparse.Namespace) -> int:
    """Open an OpenSSH session (or run a command) in a sandbox; ssh's exit status."""
    import subprocess

    from infra.machines import sandboxes

    remote = list(args.command)
    if remote and remote[0] == "--":
        remote = remote[1:]
    with tempfile.TemporaryDirectory(prefix="fluid-ssh-") as tmp:
        argv = sandboxes.ssh_argv(args.id, Path(tmp))
        return subprocess.call(argv + remote)


def cmd_sandbox_start(args: argparse.Namespace) -> int:
    """Start a stopped sandbox."""
    from infra.machines import sandboxes

    sb = sandboxes.start(args.id)
    emit_line(args, sb, f"{sb.id} {sb.state}")
    return 0


def cmd_sandbox_stop(args: argparse.Namespace) -> int:
    """Power a sandbox off."""
    from infra.machines import sandboxes

    sb = sandboxes.stop(args.id)
    emit_line(args, sb, f"{sb.id} {sb.state}")
    return 0


def cmd_sandbox_checkpoint(args: argparse.Namespace) -> int:
    """Checkpoint a sandbox's disk and memory."""
    from infra.machines import checkpoints

    cp = checkpoints.create(args.id, args.name)
    emit_line(args, cp, f"checkpoint {cp.name} of {cp.sandbox_id} created")
    return 0


def cmd_sandbox_checkpoints(args: argparse.Namespace) -> int:
    """List a sandbox's checkpoints."""
    from infra.machines import checkpoints

    cps = checkpoints.list_checkpoints(args.id)

    def human() -> None:
        for cp in cps:
            print(f"{cp.name:<30} {cp.created_at:%Y-%m-%d %H:%M:%S}")

    emit(args, {"checkpoints": dump_all(cps)}, human)
    return 0


def cmd_sandbox_restore(args: argparse.Namespace) -> int:
    """Return a sandbox to a checkpoint."""
    from infra.machines import checkpoints

    checkpoints.restore(args.id, args.name)
    emit_line(args, {"id": args.id, "restored": args.name}, f"{args.id} restored to {args.name}")
    return 0


def cmd_sandbox_fork(args: argparse.Namespace) -> int:
    """A new sandbox from a checkpoint."""
    from infra.machines import checkpoints

    sb = checkpoints.fork(args.id, args.name, args.new_name, progress=log)
    emit_line(args, sb, f"{sb.id} forked from {args.id}@{args.name}: ssh port {sb.ssh_port}")
    return 0


def cmd_sandbox_destroy(args: argparse.Namespace) -> int:
    """Destroy a sandbox."""
    from infra.machines import sandboxes

    sandboxes.destroy(args.id)
    emit_line(args, {"id": args.id, "destroyed": True}, f"{args.id} destroyed")
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid sandbox create|list|exec|ssh|start|stop|checkpoints|destroy|checkpoint|...`."""
    sandbox = add_noun(
        top,
        "sandbox",
        "sandbox VMs",
        examples=(
            "fluid sandbox create --name web",
            "fluid sandbox exec web -- apt-get install -y nginx",
            "fluid sandbox checkpoint web clean",
            "fluid sandbox fork web clean --name web-b",
            "fluid sandbox destroy web",
        ),
    )
    sp = add_command(sandbox, "create", cmd_sandbox_create, "create a sandbox and wait for SSH")
    sp.add_argument(
        "--name", default=None, help="its id: lowercase letters, digits, dashes (default: made up)"
    )
    sp.add_argument("--image", default=None, help="image name (default: FLUID_IMAGE)")
    sp.add_argument(
        "--network",
        choices=["nat", "isolated"],
        default=None,
        help="nat reaches the internet (not the host's private networks); isolated reaches "
        "nothing (default: FLUID_NETWORK)",
    )
    sp.add_argument("--agent", default=None, help="agent id recorded with the sandbox")
    add_command(sandbox, "list", cmd_sandbox_list, "list sandboxes and orphans")
    sp = add_command(sandbox, "exec", cmd_sandbox_exec, "run a command as root", json_flag=False)
    sp.add_argument("id", help="the sandbox's id (`fluid sandbox list`)")
    sp.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    sp.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after --: the command and its arguments (one word is run by the shell)",
    )
    sp = add_command(sandbox, "ssh", cmd_sandbox_ssh, "open an OpenSSH session", json_flag=False)
    sp.add_argument("id", help="the sandbox's id (`fluid sandbox list`)")
    sp.add_argument(
        "command", nargs=argparse.REMAINDER, help="after --: run this instead of a login shell"
    )
    for name, fn, help in (
        ("start", cmd_sandbox_start, "start a stopped sandbox"),
        ("stop", cmd_sandbox_stop, "power a sandbox off"),
        ("checkpoints", cmd_sandbox_checkpoints, "list checkpoints"),
        ("destroy", cmd_sandbox_destroy, "destroy a sandbox"),
    ):
        add_command(sandbox, name, fn, help).add_argument(
            "id", help="the sandbox's id (`fluid sandbox list`)"
        )
    for name, fn, help in (
        ("checkpoint", cmd_sandbox_checkpoint, "checkpoint disk and memory"),
        ("restore", cmd_sandbox_restore, "return to a checkpoint"),
    ):
        sp = add_command(sandbox, name, fn, help)
        sp.add_argument("id", help="the sandbox's id (`fluid sandbox list`)")
        sp.add_argument("name", help="the checkpoint's name")
    sp = add_command(sandbox, "fork", cmd_sandbox_fork, "a new sandbox from a checkpoint")
    sp.add_argument("id", help="the sandbox's id (`fluid sandbox list`)")
    sp.add_argument("name", help="checkpoint to fork from")
    sp.add_argument("--name", dest="new_name", default=None, help="the new sandbox's name")
