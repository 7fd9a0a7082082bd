#!/usr/bin/env python3
"""Benchmark fluid's sandboxes side by side with virt-clone and virt-diff; check issue 6's goals.

Run from the repository root, as root, when no other VM work is using the CPU:

    .venv/bin/python scripts/bench_sandbox.py [--runs N] [--only A,B,C] [--virt-diff-runs N]
                                              [--build]

Everything runs in one go on this host, in a fresh FLUID_HOME under a temporary directory in
/var/lib (own database, SSH CA, captures and warm slots; the configured storage dir, so the
sandboxes boot from the real golden image). At most one VM boots at a time; B keeps eight
running. Every VM, disk, warm slot and libvirt object it makes is removed again, also on
errors, Ctrl-C, SIGTERM and SIGHUP. Progress and each figure as it is measured go to stderr;
stdout gets the host line, one markdown table per part and the goals table.

A. create -> SSH-ready, --runs samples of each, interleaved (warm, slot, cold, virt-clone, ...):
   - warm start: wall time of `fluid sandbox create --json` plus `fluid sandbox exec ID -- true`
     (the real CLI, .venv/bin/fluid, as subprocesses) with default settings, after
     `fluid pool fill` prepared the slots and started the spare (its time is a row of its
     own). By default an unnamed create takes a spare, a warm sandbox started ahead, and a
     refill starts the next one in the background: each sample waits until a spare waits
     again, and that wait (from the take) is a row of its own;
   - warm start from a slot: the same without spares (FLUID_SPARE_SANDBOXES=0): the slot's
     saved VM is restored and reseeded while the create waits;
   - cold boot: the same with FLUID_WARM_SLOTS=0;
   - virt-clone: `virt-clone` (Debian's virtinst, installed if missing) of a template domain
     defined like a fluid sandbox (direct kernel boot, fluid's CA on the kernel command line)
     with a full disk copy, then start it and wait until an SSH command ran.
   The create JSON's "boot" field must say spare, warm or cold as the row claims. On the warm
   sandboxes also: a checkpoint without capture, its restore -> SSH-ready, its delete,
   a command over SSH in process, destroy. qemu RSS/PSS after ready per kind,
   `qemu-img create` of an overlay and the CLI's start-up (python and the imports of a
   `fluid sandbox` command, no VM), 10 samples each.
   Goals: warm median <= 3 s, and >= 5x faster than each of the other two.
B. eight sandboxes at once (FLUID_WARM_SLOTS=8, slots filled first): created one after the
   other, then one command in all eight at once; per sandbox the qemu RSS and PSS
   (/proc/<pid>/smaps_rollup of its qemu process) and the guest's used memory, plus the
   host's MemAvailable before and after. Goal: all eight answer.
C. per run, the same change on two sandboxes, each: checkpoint "before" with capture,
   `apt-get update && apt-get install -y nginx` through the guest's network, checkpoint
   "after" with capture, diff. A checkpoint is taken as checkpoints.create(capture=True)
   takes it (capture, then guest sync and snapshot) but with the capture timed on its own.
   fluid's time = capture before + capture after + loading both captures and comparing them
   (the snapshots are rows of their own, as the disk exports are on virt-diff's side).
   - default path (the goal): an unnamed create, which takes a spare. The refill captured
     the spare while it waited, before anyone asked for it (as it started the spare before
     anyone asked), so the "before" capture lists only what changed since. Each sample
     waits until a spare waits (the refill a take starts runs during the sample before);
     that wait is a row of its own;
   - named sandbox (context): a named create never takes a spare, so its "before" is the
     sandbox's first capture and walks every file.
   For --virt-diff-runs pairs (default 1) the default path's checkpoints are exported as
   standalone disks (`qemu-img convert -U -l snapshot.name=...`) and compared with libguestfs
   `virt-diff --format=qcow2 -a before -A after` (LIBGUESTFS_BACKEND_SETTINGS=force_tcg; its
   appliance is built once, untimed, beforehand).
   Debian's libguestfs-tools is installed if missing, with linux-image-amd64 (libguestfs'
   recommended kernel, from which supermin builds the appliance): a kernel in /boot and a new
   initrd on the host. Goals: fluid's default path >= 10x faster; its change set names the
   packages and services (virt-diff lists files only).

Exit status: 0 all goals met, 1 a goal missed or a step or the cleanup failed, 2 setup error
(not root, libvirt, no golden image, a tool that cannot be installed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.fluid_cli import FLUID
from bench.host import busy_line, guest_facts, is_root, load_average, report_errors
from bench.results import (
    Results,
    SetupError,
    failure,
    interrupt_on_termination,
    log,
    signals_ignored,
)
from bench.sandbox.at_once import part_b
from bench.sandbox.capture_diff import part_c
from bench.sandbox.cleanup import cleanup, remove_tree
from bench.sandbox.context import CONCURRENT, DEFAULT_WARM_SLOTS, WARM, Bench
from bench.sandbox.create_ready import part_a
from bench.sandbox.goals import goals, goals_table
from bench.sandbox.image_build import bench_build
from bench.sandbox.virt_clone import VirtCloneBench
from bench.sandbox.virt_diff import LIBGUESTFS_ENV, ensure_virt_diff, warm_up_libguestfs
from bench.tools import ensure_tool
from infra.errors import FluidError
from infra.host import images
from infra.host.libvirt_host import connect
from infra.settings import FluidSettings

PARTS = ("A", "B", "C")


def parse_parts(value: str) -> set[str]:
    """--only's value: a comma-separated subset of the parts."""
    parts = {p.strip().upper() for p in value.split(",") if p.strip()}
    if not parts or not parts <= set(PARTS):
        raise argparse.ArgumentTypeError(f"use a comma-separated subset of {','.join(PARTS)}")
    return parts


def host_line(settings: FluidSettings, golden: images.ImageManifest) -> str:
    """The host, the guest size, the image and whether this fluid has warm starts."""
    load = load_average()
    total = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return (
        f"host: nproc={os.cpu_count()} mem={int(total) / 2**20:.1f} GiB load={load} "
        f"{guest_facts(settings, golden)} warm_slots={settings.warm_slots} (default) "
        f"warm starts: {'yes' if WARM else 'not in this fluid'}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts, print their tables and the goals; the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="samples per row in A and of fluid's side in C (default 3)",
    )
    parser.add_argument(
        "--only",
        type=parse_parts,
        default=set(PARTS),
        help="parts to run, e.g. A,C (default A,B,C)",
    )
    parser.add_argument(
        "--virt-diff-runs",
        type=int,
        default=1,
        choices=(1, 2),
        help="virt-diff samples in C, 35-55 s each (default 1)",
    )
    parser.add_argument(
        "--build", action="store_true", help="also time a full image build (minutes)"
    )
    parser.add_argument("--skip-build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.virt_diff_runs > args.runs:
        parser.error("--virt-diff-runs cannot exceed --runs")
    if not is_root("libvirt's system URI, nftables, apt"):
        return 2
    if not FLUID.exists():
        print(f"error: {FLUID} is missing: install fluid into .venv first", file=sys.stderr)
        return 2

    interrupt_on_termination()
    root = Path(tempfile.mkdtemp(prefix="fluid-bench-", dir="/var/lib"))
    root.chmod(0o711)  # qemu (libvirt-qemu) must traverse to the virt-clone disks
    # Own database and CA; the configured storage dir so the real golden image is used.
    settings = FluidSettings(
        home=root / "home",
        database_url=None,
        ca_private_key=None,
        warm_slots=DEFAULT_WARM_SLOTS,  # "default settings", whatever the environment says
        # In process (B, C, the extras) no spares: only part A's CLI runs with the default.
        spare_sandboxes=0,
    )
    tag = "".join(c for c in root.name.removeprefix("fluid-bench-").lower() if c.isalnum())[:6]
    results = {p: Results() for p in ("build", *PARTS)}
    error: str | None = None
    code = 0
    bench: Bench | None = None
    try:
        try:
            golden = images.resolve(settings.image, settings=settings)
            connect(settings).close()
        except FluidError as e:
            raise SetupError(str(e)) from e
        bench = Bench(root=root, settings=settings, tag=tag or "x", runs=args.runs, golden=golden)
        print(host_line(settings, golden), flush=True)
        print(busy_line(settings, "at the start"), flush=True)
        # Tools first, so a host that cannot run a part fails before any VM work.
        if "A" in args.only:
            bench.clone = VirtCloneBench(bench)
            ensure_tool("virt-clone", "virtinst")
        if "C" in args.only:
            ensure_virt_diff()
            warm_up_libguestfs({**os.environ, **LIBGUESTFS_ENV})
        if args.build:
            bench_build(results["build"], bench)
        if "A" in args.only:
            log("== A: create -> SSH-ready: warm start, cold boot, virt-clone")
            part_a(results["A"], bench)
        if "B" in args.only:
            log(f"== B: {CONCURRENT} sandboxes at once")
            part_b(results["B"], bench)
        if "C" in args.only:
            log("== C: both captures + diff vs virt-diff")
            part_c(results["C"], bench, args.virt_diff_runs)
    except (KeyboardInterrupt, Exception) as e:  # any failure ends the run, with its message
        error, code = failure(e)
    finally:
        with signals_ignored():
            problems = cleanup(bench) if bench else []
            if bench is None and (p := remove_tree(root)):
                problems.append(p)

    print(busy_line(settings, "at the end"), flush=True)
    titles = {
        "build": "Image build",
        "A": "A. create -> SSH-ready (fluid CLI as subprocesses)",
        "B": f"B. {CONCURRENT} sandboxes at once (FLUID_WARM_SLOTS={CONCURRENT})",
        "C": "C. both captures + diff vs virt-diff (apt-get install nginx)",
    }
    for part, res in results.items():
        if res.rows:
            print(f"\n## {titles[part]}\n\n{res.table()}")
            for line in bench.facts.get(part, []) if bench else []:
                print(f"\n{line}")
    gs = goals(args.only, results, bench) if code in (0, 1) else []
    if gs:
        print(f"\n## Goals (issue 6)\n\n{goals_table(gs)}", flush=True)
    for p in bench.problems if bench else []:
        print(f"error: {p}", file=sys.stderr)
        code = code or 1
    code = report_errors(error, problems, code)
    if any(not g.ok for g in gs):
        print("error: a goal was missed (see the goals table)", file=sys.stderr)
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
