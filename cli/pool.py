"""`fluid pool`: warm starts, i.e. slots (saved booted VMs) and spare sandboxes. Calls infra/
directly and never imports Prefect."""

from __future__ import annotations

import argparse

from cli.args import add_command, add_noun, count
from cli.output import dump_all, emit, emit_line, log, print_table


def cmd_pool_fill(args: argparse.Namespace) -> int:
    """Prepare slots and start spares."""
    from infra.machines import spare_fill, warm_slots
    from infra.settings import get_settings

    made = warm_slots.fill(args.slots, image=args.image, progress=log)
    slots = warm_slots.list_slots()
    # Spares are of the default image only: an unnamed create takes them.
    started = spare_fill.fill(say=log) if args.image in (None, get_settings().image) else []
    emit_line(
        args,
        {
            "prepared": [m.name for m in made],
            "slots": dump_all(slots),
            "spares_started": started,
        },
        f"{len(made)} slot(s) prepared; {len(slots)} ready for warm starts; "
        f"{len(started)} spare(s) started",
    )
    return 0


def cmd_pool_list(args: argparse.Namespace) -> int:
    """List prepared slots, who holds them, and waiting spares."""
    from infra.machines import spares, warm_slots

    slots = warm_slots.list_slots()
    waiting = spares.list_spares()

    def human() -> None:
        print_table(
            "{:<12} {:<16} {:>7} {:>8}  {:<17} {}",
            ("SLOT", "IMAGE", "MEMORY", "STATE", "SAVED", "IN USE BY"),
            (
                (
                    m.name,
                    m.image + " " + m.image_version,
                    f"{m.memory_mib}Mi",
                    f"{m.state_bytes / 2**20:.0f}Mi",
                    f"{m.saved_at:%Y-%m-%d %H:%M}",
                    m.in_use_by or "-",
                )
                for m in slots
            ),
        )
        for r in waiting:
            print(f"spare {r.id} waiting in slot {r.slot} (expires {r.expires_at:%Y-%m-%d %H:%M})")

    emit(
        args,
        {
            "slots": dump_all(slots),
            "spares": [{"id": r.id, "slot": r.slot, "ssh_port": r.ssh_port} for r in waiting],
        },
        human,
    )
    return 0


def cmd_pool_clear(args: argparse.Namespace) -> int:
    """Stop the spares; remove every slot no sandbox holds."""
    from infra.machines import spares, warm_slots

    stopped = spares.clear()  # first: each holds a slot
    removed = warm_slots.clear()
    emit_line(
        args,
        {"removed": removed, "spares_stopped": stopped},
        f"stopped {len(stopped)} spare(s); removed {len(removed)} idle slot(s)",
    )
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid pool fill|list|clear`."""
    pool = add_noun(
        top,
        "pool",
        "warm starts: slots (saved booted VMs) and spare sandboxes",
        examples=("fluid pool fill", "fluid pool fill 2 --image debian-12", "fluid pool list"),
    )
    sp = add_command(
        pool, "fill", cmd_pool_fill, "prepare slots and start spares (FLUID_SPARE_SANDBOXES)"
    )
    sp.add_argument(
        "slots",
        nargs="?",
        type=count,
        default=None,
        help="slots to have ready, 0 or more (default: FLUID_WARM_SLOTS)",
    )
    sp.add_argument("--image", default=None, help="image name (default: FLUID_IMAGE)")
    add_command(
        pool, "list", cmd_pool_list, "list prepared slots, who holds them, and waiting spares"
    )
    add_command(
        pool, "clear", cmd_pool_clear, "stop the spares; remove every slot no sandbox holds"
    )
