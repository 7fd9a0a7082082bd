"""`fluid diff`, `fluid export` and `fluid verify`: a change between two checkpoints, as a
report, as an Ansible playbook, and proven by replay. Calls infra/ only; never imports
Prefect."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.args import accept_exclusion_option, add_command
from cli.output import emit, log

if TYPE_CHECKING:
    from infra.state.base import ChangeSet


def changeset(args: argparse.Namespace) -> ChangeSet:
    """What changed in `args.sandbox` from checkpoint `args.from_cp` to `args.to_cp`."""
    from infra.state import capture
    from infra.state.diff import compare

    before = capture.load(args.sandbox, args.from_cp)
    after = capture.load(args.sandbox, args.to_cp)
    return compare(before, after)


def cmd_diff(args: argparse.Namespace) -> int:
    """Print the change: JSON, Markdown, or for the terminal (coloured on a tty)."""
    from infra.state.diff import markdown, terminal

    cs = changeset(args)
    if args.json:
        print(cs.model_dump_json(indent=2))
    elif args.markdown:
        print(markdown(cs))
    else:
        print(terminal(cs, color=sys.stdout.isatty()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the change as an Ansible playbook directory."""
    from infra.state.export import export

    out = export(changeset(args), Path(args.out))
    digest = (out / "DIGEST").read_text().strip()
    emit(
        args,
        {"out": str(out), "digest": digest},
        lambda: print(
            f"playbook written to {out} (digest {digest[:16]}…); run it with "
            f"ansible-playbook -i INVENTORY {out / 'site.yml'}"
        ),
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Replay a playbook on a fresh sandbox and compare; 1 when the proof fails."""
    from infra.ansible.verification import verify

    report = verify(
        Path(args.dir),
        image=args.image,
        progress=log,
        accept_exclusions=args.accept_exclusions or (),
    )
    emit(args, report, lambda: print_report(report))
    return 0 if report.passed else 1


def print_report(report: Any) -> None:
    """A verification report for a human: the verdict, exclusions, timings, the residue."""
    import shlex

    from infra.escaping import term_line
    from infra.state.base import ChangeSet
    from infra.state.diff import terminal

    def line(c: Any) -> str:
        return f"{term_line(c.kind)} {term_line(c.key)}  # {term_line(c.exclusion())}"

    if report.excluded:
        print(
            f"FAILED: {len(report.excluded)} change(s) the playbook leaves out are not "
            "accepted; no replay was booted"
        )
        print("".join(f"  not accepted: {line(c)}\n" for c in report.excluded), end="")
        keys = " ".join(f"--accept-exclusion {shlex.quote(c.key)}" for c in report.excluded)
        print(f"to accept them (provisioned apart): fluid verify DIR {term_line(keys)}")
    else:
        print(term_line(report.summary()))
    for c in report.accepted:
        print(f"accepted exclusion: {line(c)}")
    for key in report.unmatched:
        print(f"ignored --accept-exclusion {term_line(key)}: no change left out has that key")
    if report.timings:
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items()))
    if report.residual:
        print(terminal(ChangeSet(changes=report.residual)))


def register(top: argparse._SubParsersAction) -> None:
    """`fluid diff`, `fluid export` and `fluid verify`."""
    sp = add_command(
        top,
        "diff",
        cmd_diff,
        "what changed in a sandbox between two checkpoints",
        examples=(
            "fluid diff web --from before --to after",
            "fluid diff web --from before --to after --markdown",
        ),
    )
    sp.add_argument("sandbox", help="the sandbox's id (`fluid sandbox list`)")
    sp.add_argument("--from", dest="from_cp", required=True, help="checkpoint name")
    sp.add_argument("--to", dest="to_cp", required=True, help="checkpoint name")
    sp.add_argument("--markdown", action="store_true", help="a Markdown report instead of text")
    sp = add_command(
        top,
        "export",
        cmd_export,
        "export a change as an Ansible playbook directory",
        examples=("fluid export web --from before --to after --out ./change",),
    )
    sp.add_argument("sandbox", help="the sandbox's id (`fluid sandbox list`)")
    sp.add_argument("--from", dest="from_cp", required=True, help="checkpoint before the change")
    sp.add_argument("--to", dest="to_cp", required=True, help="checkpoint after the change")
    sp.add_argument("--out", required=True, help="new directory for the playbook")
    sp = add_command(
        top,
        "verify",
        cmd_verify,
        "replay a playbook on a fresh sandbox and compare",
        examples=(
            "fluid verify ./change",
            "fluid verify ./change --accept-exclusion /srv/app/id_ed25519",
        ),
    )
    sp.add_argument("dir", help="a playbook directory `fluid export` wrote")
    sp.add_argument("--image", default=None, help="image name (default: the one recorded)")
    accept_exclusion_option(sp)
