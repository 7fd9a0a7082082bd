"""Output shared by the commands: progress on stderr, results as JSON or text, tables, errors,
and a guest's output passed through byte for byte (terminal-safe on a terminal)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from infra.errors import CommandTimeout, FluidError


def log(msg: str) -> None:
    """One line on stderr, flushed: progress and notes, never results."""
    print(msg, file=sys.stderr, flush=True)


def error(e: BaseException | str) -> None:
    """Say on stderr that the command failed, and why."""
    log(f"fluid: error: {e}")


def emit(args: argparse.Namespace, obj: Any, human: Callable[[], None]) -> None:
    """One JSON object on stdout with --json, else the human form."""
    if getattr(args, "json", False):
        if hasattr(obj, "model_dump"):
            obj = obj.model_dump(mode="json")
        print(json.dumps(obj, default=str))
    else:
        human()


def emit_line(args: argparse.Namespace, obj: Any, line: str) -> None:
    """One JSON object on stdout with --json, else the one line `line`."""
    emit(args, obj, lambda: print(line))


def dump_all(items: Iterable[Any], **kwargs: Any) -> list[Any]:
    """Each pydantic model in `items` as JSON-ready data (`kwargs` go to model_dump)."""
    return [m.model_dump(mode="json", **kwargs) for m in items]


def print_table(row: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A header line, then one line per row, each laid out by the format string `row`."""
    print(row.format(*header))
    for values in rows:
        print(row.format(*values))


# The kinds of orphan a VM listing may report: its field, and what they are.
ORPHANS = (
    ("orphan_domains", "domains without a record"),
    ("orphan_records", "records without a domain"),
    ("orphan_disks", "disks without a record"),
)


def print_orphans(listing: Any) -> None:
    """One line per non-empty kind of orphan among those `listing` reports."""
    for field, label in ORPHANS:
        items = getattr(listing, field, None)
        if items:
            print(f"orphans ({label}): {', '.join(items)}")


def run_exec(args: argparse.Namespace, usage: str, run: Callable[[str], Any]) -> int:
    """The exec contract: output byte for byte, the command's exit status (124 on timeout)."""
    from infra.machines.sandboxes import quote_command

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise FluidError(f"nothing to run: {usage} -- COMMAND...")
    try:
        r = run(quote_command(argv))
    except CommandTimeout as e:
        pass_through(e.result)
        raise
    pass_through(r)
    return r.exit_status if r.exit_status >= 0 else 255


def pass_through(r: Any) -> None:
    """A command's stdout and stderr onto ours, and a note on stderr if any was cut."""
    from infra.escaping import term_bytes

    # Byte for byte into a pipe or file; a terminal gets no control sequence from the guest.
    for stream, data in ((sys.stdout, r.stdout), (sys.stderr, r.stderr)):
        stream.buffer.write(term_bytes(data) if stream.isatty() else data)
        stream.buffer.flush()
    if r.stdout_cut or r.stderr_cut:
        log(
            f"fluid: output capped: {r.stdout_cut} bytes of stdout and {r.stderr_cut} bytes "
            "of stderr were cut from the middle"
        )
