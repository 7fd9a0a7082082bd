"""`fluid production`: the persistent production VM changes are applied to. Calls infra/
directly; only saving the VM's ProductionTarget block imports Prefect (lazily, through
blocks/)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.args import add_command, add_noun
from cli.output import emit, emit_line, log, print_orphans, print_table, run_exec
from infra.errors import FluidError


def save_production_block(vm: Any) -> bool:
    """Save the ProductionTarget block named after production VM `vm`; False when skipped.

    The only production code path that imports Prefect. ProductionBlockError (with how to
    retry) when saving fails; the VM is left as it is.
    """
    from infra.errors import ProductionBlockError

    try:
        from orchestration import control_plane
    except ModuleNotFoundError as e:
        if e.name != "orchestration.control_plane":
            raise
        log(
            "fluid: note: orchestration.control_plane is not available, so no Prefect block "
            "was saved; "
            f"run `fluid production save-block {vm.name}` once it is"
        )
        return False
    try:
        control_plane.use_prefect(progress=log)
        from blocks.production_target import ProductionTarget

        ProductionTarget.for_vm(vm).save(vm.name, overwrite=True)
    except Exception as e:  # Prefect raises many types (HTTP, validation, server start)
        raise ProductionBlockError(
            f"production VM {vm.name} is up (ssh port {vm.ssh_port}), but saving its Prefect "
            f"block fluid-production-target/{vm.name} failed: {type(e).__name__}: {e}. Fix that, "
            f"then run `fluid production save-block {vm.name}` (create would refuse: the VM "
            "exists)"
        ) from e
    return True


def cmd_production_create(args: argparse.Namespace) -> int:
    """Create a production VM and (unless --no-block) save its Prefect block."""
    from infra.machines import production

    vm = production.create(args.name, image=args.image, progress=log)
    block_error: FluidError | None = None
    saved = False
    if not args.no_block:
        try:
            saved = save_production_block(vm)
        except FluidError as e:
            block_error = e
    block = f"fluid-production-target/{vm.name}" if saved else None
    emit_line(
        args,
        vm.model_dump(mode="json") | {"block": block},
        f"{vm.name} ready: ssh {vm.address}:{vm.ssh_port} (fluid production exec {vm.name} -- CMD)"
        + (f"; Prefect block {block}" if block else ""),
    )
    if block_error is not None:
        raise block_error
    return 0


def cmd_production_save_block(args: argparse.Namespace) -> int:
    """Save (again) a production VM's ProductionTarget block; 1 when none was saved."""
    from infra.machines import production

    vm = production.get(args.name)
    saved = save_production_block(vm)
    block = f"fluid-production-target/{vm.name}" if saved else None
    emit_line(
        args,
        {"name": vm.name, "block": block},
        f"saved Prefect block {block}" if block else "no block saved",
    )
    return 0 if saved else 1


def cmd_production_list(args: argparse.Namespace) -> int:
    """List production VMs and orphans."""
    from infra.machines import production

    listing = production.list_production()

    def human() -> None:
        print_table(
            "{:<20} {:<9} {:<21}  {:<16} {}",
            ("NAME", "STATE", "SSH", "IMAGE", "CREATED"),
            (
                (
                    vm.name,
                    vm.state,
                    f"{vm.address}:{vm.ssh_port}",
                    vm.image + " " + vm.image_version,
                    f"{vm.created_at:%Y-%m-%d %H:%M}",
                )
                for vm in listing.vms
            ),
        )
        print_orphans(listing)

    emit(args, listing, human)
    return 0


def cmd_production_exec(args: argparse.Namespace) -> int:
    """Run a command as root: its output byte for byte, its exit status."""
    from infra.machines import production

    return run_exec(
        args,
        "fluid production exec NAME",
        lambda cmd: production.run(args.name, cmd, timeout=args.timeout),
    )


def cmd_production_start(args: argparse.Namespace) -> int:
    """Start a stopped production VM and wait for SSH."""
    from infra.machines import production

    vm = production.start(args.name, progress=log)
    emit_line(args, vm, f"{vm.name} {vm.state}")
    return 0


def cmd_production_stop(args: argparse.Namespace) -> int:
    """Power a production VM off."""
    from infra.machines import production

    vm = production.stop(args.name)
    emit_line(args, vm, f"{vm.name} {vm.state}")
    return 0


def cmd_production_destroy(args: argparse.Namespace) -> int:
    """Destroy a production VM and its disk (its Prefect block stays)."""
    from infra.machines import production

    production.destroy(args.name)
    # Deleting the block would import Prefect here; say how instead.
    log(
        f"fluid: note: a Prefect block fluid-production-target/{args.name}, if one was saved, "
        f"stays; `prefect block delete fluid-production-target/{args.name}` removes it"
    )
    emit_line(args, {"name": args.name, "destroyed": True}, f"{args.name} destroyed")
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid production create|exec|list|save-block|start|stop|destroy`."""
    production = add_noun(
        top,
        "production",
        "the persistent production VM changes are applied to",
        examples=(
            "fluid production create web",
            "fluid production exec web -- 'systemctl is-active ssh'",
            "fluid production list",
            "fluid production destroy web",
        ),
    )
    sp = add_command(
        production,
        "create",
        cmd_production_create,
        "create a production VM (a full copy of an image) and save its Prefect block",
    )
    sp.add_argument("name", help="the VM's name, also its ProductionTarget block's")
    sp.add_argument("--image", default=None, help="image name (default: FLUID_IMAGE)")
    sp.add_argument(
        "--no-block",
        action="store_true",
        help="do not save the ProductionTarget block (later: fluid production save-block NAME)",
    )
    sp = add_command(
        production, "exec", cmd_production_exec, "run a command as root", json_flag=False
    )
    sp.add_argument("name", help="the production VM's name (`fluid production list`)")
    sp.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    sp.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after --: the command and its arguments (one word is run by the shell)",
    )
    add_command(production, "list", cmd_production_list, "list production VMs and orphans")
    for name, fn, help in (
        ("save-block", cmd_production_save_block, "save (again) its ProductionTarget block"),
        ("start", cmd_production_start, "start a stopped production VM, wait for SSH"),
        ("stop", cmd_production_stop, "power a production VM off"),
        ("destroy", cmd_production_destroy, "destroy a production VM and its disk"),
    ):
        add_command(production, name, fn, help).add_argument(
            "name", help="the production VM's name (`fluid production list`)"
        )
