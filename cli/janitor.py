"""`fluid janitor`: reap expired and orphaned sandboxes now. Runs the janitor flow, so it
imports Prefect (lazily, through flows/)."""

from __future__ import annotations

import argparse

from cli.args import add_command
from cli.output import emit
from cli.server import use_prefect


def cmd_janitor(args: argparse.Namespace) -> int:
    """Reap and prune once; 1 when anything failed."""
    use_prefect()
    from flows.janitor import janitor

    report = janitor(grace_s=args.grace)
    emit(
        args,
        report,
        lambda: print(
            "\n".join(
                [f"reaped {r.sandbox_id}: {r.reason}" for r in report.reaped]
                + [f"pruned {p.count} {p.what} ({p.bytes} bytes)" for p in report.pruned if p.count]
            )
            or "nothing to reap or prune"
        ),
    )
    return 1 if report.errors else 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid janitor [--grace S]`."""
    sp = add_command(
        top,
        "janitor",
        cmd_janitor,
        "reap expired and orphaned sandboxes now",
        examples=("fluid janitor", "fluid janitor --grace 60 --json"),
    )
    sp.add_argument("--grace", type=int, default=600, help="minimum age of orphans, seconds")
