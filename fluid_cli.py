"""The `fluid` command line.

Sandbox and image commands call infra/ directly and never import Prefect, so they start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.errors import CommandTimeout, FluidError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _emit(args: argparse.Namespace, obj: Any, human: Callable[[], None]) -> None:
    """One JSON object on stdout with --json, else the human form."""
    if getattr(args, "json", False):
        if hasattr(obj, "model_dump"):
            obj = obj.model_dump(mode="json")
        print(json.dumps(obj, default=str))
    else:
        human()


# --- image -------------------------------------------------------------------------------


def cmd_image_build(args: argparse.Namespace) -> int:
    from infra import images

    m = images.build(args.name, force=args.force, progress=_log)
    _emit(args, m, lambda: print(f"{m.name} {m.version} {m.disk_path}"))
    return 0


def cmd_image_import(args: argparse.Namespace) -> int:
    from infra import images

    m = images.import_image(Path(args.path), args.name, progress=_log)
    _emit(args, m, lambda: print(f"{m.name} {m.version} {m.disk_path}"))
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    from infra import images

    found = images.list_images()

    def human() -> None:
        print(f"{'NAME':<16} {'VERSION':<8} {'SOURCE':<11} {'SIZE':>8}  BUILT")
        for m in found:
            print(
                f"{m.name:<16} {m.version:<8} {m.source:<11} "
                f"{m.size_bytes / 2**20:>6.0f}Mi  {m.built_at:%Y-%m-%d %H:%M}"
            )

    _emit(args, {"images": [m.model_dump(mode="json", exclude={"packages"}) for m in found]}, human)
    return 0


# --- sandbox -----------------------------------------------------------------------------


def cmd_sandbox_create(args: argparse.Namespace) -> int:
    from infra import sandboxes

    sb = sandboxes.create(
        args.name, image=args.image, network=args.network, agent_id=args.agent, progress=_log
    )
    _emit(
        args,
        sb,
        lambda: print(f"{sb.id} ready: ssh port {sb.ssh_port} (fluid sandbox ssh {sb.id})"),
    )
    return 0


def cmd_sandbox_list(args: argparse.Namespace) -> int:
    from infra import sandboxes

    listing = sandboxes.list_sandboxes()

    def human() -> None:
        print(f"{'ID':<20} {'STATE':<9} {'PORT':>5}  {'NETWORK':<8} {'IMAGE':<16} EXPIRES")
        for s in listing.sandboxes:
            print(
                f"{s.id:<20} {s.state:<9} {s.ssh_port:>5}  {s.network:<8} "
                f"{s.image + ' ' + s.image_version:<16} {s.expires_at:%Y-%m-%d %H:%M}"
            )
        for label, items in (
            ("domains without a record", listing.orphan_domains),
            ("records without a domain", listing.orphan_records),
            ("disks without a record", listing.orphan_disks),
        ):
            if items:
                print(f"orphans ({label}): {', '.join(items)}")

    _emit(args, listing, human)
    return 0


def cmd_sandbox_exec(args: argparse.Namespace) -> int:
    from infra import sandboxes

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise FluidError("nothing to run: fluid sandbox exec ID -- COMMAND...")
    try:
        r = sandboxes.run(args.id, sandboxes.quote_command(argv), timeout=args.timeout)
    except CommandTimeout as e:
        _pass_through(e.result)
        raise
    _pass_through(r)
    return r.exit_status if r.exit_status >= 0 else 255


def _pass_through(r: Any) -> None:
    sys.stdout.buffer.write(r.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(r.stderr)
    sys.stderr.buffer.flush()
    if r.stdout_cut or r.stderr_cut:
        _log(
            f"fluid: output capped: {r.stdout_cut} bytes of stdout and {r.stderr_cut} bytes "
            "of stderr were cut from the middle"
        )


def cmd_sandbox_ssh(args: argparse.Namespace) -> int:
    import subprocess

    from infra import sandboxes

    remote = list(args.command)
    if remote and remote[0] == "--":
        remote = remote[1:]
    with tempfile.TemporaryDirectory(prefix="fluid-ssh-") as tmp:
        argv = sandboxes.ssh_argv(args.id, Path(tmp))
        return subprocess.call(argv + remote)


def cmd_sandbox_start(args: argparse.Namespace) -> int:
    from infra import sandboxes

    sb = sandboxes.start(args.id)
    _emit(args, sb, lambda: print(f"{sb.id} {sb.state}"))
    return 0


def cmd_sandbox_stop(args: argparse.Namespace) -> int:
    from infra import sandboxes

    sb = sandboxes.stop(args.id)
    _emit(args, sb, lambda: print(f"{sb.id} {sb.state}"))
    return 0


def cmd_sandbox_checkpoint(args: argparse.Namespace) -> int:
    from infra import checkpoints

    cp = checkpoints.create(args.id, args.name)
    _emit(args, cp, lambda: print(f"checkpoint {cp.name} of {cp.sandbox_id} created"))
    return 0


def cmd_sandbox_checkpoints(args: argparse.Namespace) -> int:
    from infra import checkpoints

    cps = checkpoints.list_checkpoints(args.id)

    def human() -> None:
        for cp in cps:
            print(f"{cp.name:<30} {cp.created_at:%Y-%m-%d %H:%M:%S}")

    _emit(args, {"checkpoints": [c.model_dump(mode="json") for c in cps]}, human)
    return 0


def cmd_sandbox_restore(args: argparse.Namespace) -> int:
    from infra import checkpoints

    checkpoints.restore(args.id, args.name)
    _emit(
        args,
        {"id": args.id, "restored": args.name},
        lambda: print(f"{args.id} restored to {args.name}"),
    )
    return 0


def cmd_sandbox_fork(args: argparse.Namespace) -> int:
    from infra import checkpoints

    sb = checkpoints.fork(args.id, args.name, args.new_name, progress=_log)
    _emit(
        args,
        sb,
        lambda: print(f"{sb.id} forked from {args.id}@{args.name}: ssh port {sb.ssh_port}"),
    )
    return 0


def cmd_sandbox_destroy(args: argparse.Namespace) -> int:
    from infra import sandboxes

    sandboxes.destroy(args.id)
    _emit(args, {"id": args.id, "destroyed": True}, lambda: print(f"{args.id} destroyed"))
    return 0


# --- change: diff, export, verify ---------------------------------------------------------


def _changeset(args: argparse.Namespace):
    from infra.state import capture
    from infra.state.diff import compare

    before = capture.load(args.sandbox, args.from_cp)
    after = capture.load(args.sandbox, args.to_cp)
    return compare(before, after)


def cmd_diff(args: argparse.Namespace) -> int:
    from infra.state.diff import markdown, terminal

    cs = _changeset(args)
    if args.json:
        print(cs.model_dump_json(indent=2))
    elif args.markdown:
        print(markdown(cs))
    else:
        print(terminal(cs, color=sys.stdout.isatty()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from infra.state.export import export

    out = export(_changeset(args), Path(args.out))
    digest = (out / "DIGEST").read_text().strip()
    _emit(
        args,
        {"out": str(out), "digest": digest},
        lambda: print(
            f"playbook written to {out} (digest {digest[:16]}…); run it with "
            f"ansible-playbook -i INVENTORY {out / 'site.yml'}"
        ),
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from infra.verification import verify

    report = verify(Path(args.dir), image=args.image, progress=_log)
    _emit(args, report, lambda: _print_report(report))
    return 0 if report.passed else 1


def _print_report(report) -> None:
    from infra.state.base import ChangeSet
    from infra.state.diff import terminal

    print(report.summary())
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items()))
    if report.residual:
        print(terminal(ChangeSet(changes=report.residual)))


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fluid", description=__doc__.splitlines()[0])
    top = p.add_subparsers(dest="group", required=True)

    def sub(
        parent: Any,
        name: str,
        fn: Callable[[argparse.Namespace], int],
        help: str,
        json_flag: bool = True,
    ) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="one JSON object on stdout")
        return sp

    image = top.add_parser("image", help="golden images").add_subparsers(dest="cmd", required=True)
    sp = sub(image, "build", cmd_image_build, "build the golden image (cached by its inputs)")
    sp.add_argument("--name", default=None, help="image name (default: FLUID_IMAGE)")
    sp.add_argument("--force", action="store_true", help="rebuild even when up to date")
    sp = sub(image, "import", cmd_image_import, "register an existing qcow2 as an image")
    sp.add_argument("path")
    sp.add_argument("--name", required=True)
    sub(image, "list", cmd_image_list, "list image versions")

    sandbox = top.add_parser("sandbox", help="sandbox VMs").add_subparsers(
        dest="cmd", required=True
    )
    sp = sub(sandbox, "create", cmd_sandbox_create, "create a sandbox and wait for SSH")
    sp.add_argument("--name", default=None)
    sp.add_argument("--image", default=None)
    sp.add_argument("--network", choices=["nat", "isolated"], default=None)
    sp.add_argument("--agent", default=None, help="agent id recorded with the sandbox")
    sub(sandbox, "list", cmd_sandbox_list, "list sandboxes and orphans")
    sp = sub(sandbox, "exec", cmd_sandbox_exec, "run a command as root", json_flag=False)
    sp.add_argument("id")
    sp.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    sp.add_argument("command", nargs=argparse.REMAINDER)
    sp = sub(sandbox, "ssh", cmd_sandbox_ssh, "open an OpenSSH session", json_flag=False)
    sp.add_argument("id")
    sp.add_argument("command", nargs=argparse.REMAINDER)
    for name, fn, help in (
        ("start", cmd_sandbox_start, "start a stopped sandbox"),
        ("stop", cmd_sandbox_stop, "power a sandbox off"),
        ("checkpoints", cmd_sandbox_checkpoints, "list checkpoints"),
        ("destroy", cmd_sandbox_destroy, "destroy a sandbox"),
    ):
        sub(sandbox, name, fn, help).add_argument("id")
    for name, fn, help in (
        ("checkpoint", cmd_sandbox_checkpoint, "checkpoint disk and memory"),
        ("restore", cmd_sandbox_restore, "return to a checkpoint"),
    ):
        sp = sub(sandbox, name, fn, help)
        sp.add_argument("id")
        sp.add_argument("name")
    sp = sub(sandbox, "fork", cmd_sandbox_fork, "a new sandbox from a checkpoint")
    sp.add_argument("id")
    sp.add_argument("name", help="checkpoint to fork from")
    sp.add_argument("--name", dest="new_name", default=None, help="the new sandbox's name")

    sp = sub(top, "diff", cmd_diff, "what changed in a sandbox between two checkpoints")
    sp.add_argument("sandbox")
    sp.add_argument("--from", dest="from_cp", required=True, help="checkpoint name")
    sp.add_argument("--to", dest="to_cp", required=True, help="checkpoint name")
    sp.add_argument("--markdown", action="store_true")
    sp = sub(top, "export", cmd_export, "export a change as an Ansible playbook directory")
    sp.add_argument("sandbox")
    sp.add_argument("--from", dest="from_cp", required=True)
    sp.add_argument("--to", dest="to_cp", required=True)
    sp.add_argument("--out", required=True, help="new directory for the playbook")
    sp = sub(top, "verify", cmd_verify, "replay a playbook on a fresh sandbox and compare")
    sp.add_argument("dir")
    sp.add_argument("--image", default=None, help="image name (default: the one recorded)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fluid` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CommandTimeout as e:
        _log(f"fluid: error: {e}")
        return 124
    except FluidError as e:
        _log(f"fluid: error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
