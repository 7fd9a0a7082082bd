"""`fluid host`: the hypervisor hosts fluid places runs on, their capacity, labels and state.

Reads and writes fluid's hosts table only; whether each host's worker is online is Prefect's
to say, and placement asks it (orchestration/placement.py). Imports no Prefect module.
"""

from __future__ import annotations

import argparse

from cli.args import add_command, add_noun, parse_labels
from cli.output import dump_all, emit, emit_line, print_table
from infra.errors import FluidError
from infra.records import hosts
from infra.records.hosts import Host


class HostLine(Host):
    """A host as listed: its record and the sandboxes on it now."""

    sandboxes: int


def listing() -> list[HostLine]:
    """Every registered host with the count of sandboxes on it."""
    counts = hosts.sandbox_counts()
    return [HostLine(**h.model_dump(), sandboxes=counts.get(h.id, 0)) for h in hosts.list_hosts()]


def cmd_host_add(args: argparse.Namespace) -> int:
    """Register a host, or change its capacity or labels."""
    if args.max_sandboxes is not None and args.max_sandboxes < 1:
        raise FluidError(f"--max-sandboxes {args.max_sandboxes}: a host holds at least 1")
    h = hosts.add(args.id, max_sandboxes=args.max_sandboxes, labels=parse_labels(args.label))
    line = f"host {h.id} {h.state}: up to {h.max_sandboxes} sandboxes, queue {h.work_queue}"
    emit_line(args, h, line)
    return 0


def cmd_host_list(args: argparse.Namespace) -> int:
    """List the hosts, their state, sandboxes in use and capacity."""
    found = listing()

    def human() -> None:
        print_table(
            "{:<20} {:<9} {:>9} {:>4}  {:<17} {}",
            ("ID", "STATE", "SANDBOXES", "MAX", "HEARTBEAT", "LABELS"),
            (
                (
                    h.id,
                    h.state,
                    h.sandboxes,
                    h.max_sandboxes,
                    f"{h.last_heartbeat:%Y-%m-%d %H:%M}" if h.last_heartbeat else "-",
                    ",".join(f"{k}={v}" for k, v in h.labels.items()) or "-",
                )
                for h in found
            ),
        )

    emit(args, {"hosts": dump_all(found)}, human)
    return 0


def cmd_host_drain(args: argparse.Namespace) -> int:
    """Place no new run on a host; runs already there go on."""
    h = hosts.set_state(args.id, "draining", "drained by `fluid host drain`")
    emit_line(args, h, f"host {h.id} draining: no new runs are placed on it")
    return 0


def cmd_host_ready(args: argparse.Namespace) -> int:
    """Let runs be placed on a host again."""
    h = hosts.set_state(args.id, "ready")
    emit_line(args, h, f"host {h.id} ready: runs may be placed on it")
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid host add|list|drain|ready`."""
    host = add_noun(
        top,
        "host",
        "the hypervisor hosts runs are placed on",
        examples=(
            "fluid host add hv-2 --max-sandboxes 6 --label zone=a",
            "fluid host list",
            "fluid host drain hv-2",
            "fluid host ready hv-2",
        ),
    )
    sp = add_command(host, "add", cmd_host_add, "register a host (or change its capacity, labels)")
    sp.add_argument("id", help="host id: lowercase letters, digits, dashes (its FLUID_HOST_ID)")
    sp.add_argument(
        "--max-sandboxes", type=int, default=None, help="sandboxes at once (FLUID_MAX_SANDBOXES)"
    )
    sp.add_argument(
        "--label",
        action="append",
        metavar="K=V",
        default=None,
        help="a label runs can ask for (repeatable; replaces the host's labels)",
    )
    add_command(host, "list", cmd_host_list, "list hosts, their state, sandboxes and capacity")
    sp = add_command(host, "drain", cmd_host_drain, "place no new runs on a host")
    sp.add_argument("id", help="host id (`fluid host list`)")
    sp = add_command(host, "ready", cmd_host_ready, "place runs on a host again (undo drain)")
    sp.add_argument("id", help="host id (`fluid host list`)")
