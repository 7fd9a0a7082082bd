"""`fluid audit`: print the audit trail of a sandbox or run, or verify the keyed chain. Calls
infra/ only; never imports Prefect."""

from __future__ import annotations

import argparse

from cli.args import add_command
from cli.output import dump_all, emit
from infra.errors import FluidError


def cmd_audit(args: argparse.Namespace) -> int:
    """`fluid audit verify [--head H]` checks the chain; `fluid audit SUBJECT` prints records."""
    from infra.records import audit

    if args.subject == "verify":
        report = audit.verify(expected_head=args.head)

        def human() -> None:
            if report.ok:
                print(f"OK: {report.count} records, head {report.head or '(empty)'}")
            for p in report.problems:
                print(f"TAMPERED: {p}")
            for n in report.notes:
                print(f"NOTE: {n}")
            for a in report.advice:
                print(f"WHAT TO DO: {a}")

        emit(args, report, human)
        return 0 if report.ok else 1
    if args.head is not None:
        raise FluidError("--head goes with `fluid audit verify`")
    records = audit.entries(args.subject)
    if not records and not _known_subject(args.subject):
        raise audit.AuditError(
            f"nothing is known about {args.subject!r}: no sandbox, run or audit record by that "
            "id (`fluid sandbox list` lists sandboxes; `fluid run` prints run ids)"
        )

    from infra.escaping import term_line

    def human() -> None:
        if not records:
            print(f"no audit records for {args.subject}")
        width = max((len(r.actor) for r in records), default=0)
        for r in records:
            print(
                f"{r.seq:>6}  {r.at:%Y-%m-%d %H:%M:%S}Z  {r.kind:<12}  "
                f"{term_line(r.actor):<{width}}  {term_line(r.summary)}"
            )

    emit(args, {"records": dump_all(records)}, human)
    return 0


def _known_subject(subject: str) -> bool:
    from infra.records import store

    with store.session() as s:
        return (
            s.get(store.SandboxRecord, subject) is not None
            or s.get(store.AgentRunRecord, subject) is not None
        )


def register(top: argparse._SubParsersAction) -> None:
    """`fluid audit SANDBOX_OR_RUN|verify [--head H]`."""
    sp = add_command(
        top,
        "audit",
        cmd_audit,
        "print the audit trail of a sandbox or run; `fluid audit verify` checks the keyed chain "
        "and the decisions and applies tables against it",
        examples=(
            "fluid audit web",
            "fluid audit 0b6e3c1a-5d2f-4f57-9d1e-2f4a8c7b9e10 --json",
            "fluid audit verify --head HASH",
        ),
    )
    sp.add_argument(
        "subject",
        metavar="SANDBOX_OR_RUN|verify",
        help="a sandbox id or run id whose records to print, or `verify` to check the chain",
    )
    sp.add_argument("--head", default=None, help="verify: this published head must be in the chain")
