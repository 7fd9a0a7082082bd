"""Part C of bench_sandbox: both captures + diff of an nginx install, on the default path (a
spare taken) and on a named sandbox, against virt-diff on the same two disks."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.results import BenchError, Results, log, median, timed
from bench.sandbox.context import (
    C_FLUID,
    C_FLUID_NAMED,
    C_SPARE_WAIT,
    C_VIRT_DIFF,
    WARM,
    Bench,
    fluid_says,
    wait_for_spare,
)
from bench.sandbox.virt_diff import LIBGUESTFS_ENV, VIRT_DIFF_TIMEOUT_S
from infra.machines import checkpoints, sandbox_records, sandboxes, spare_fill, spares
from infra.settings import FluidSettings
from infra.state import capture as captures
from infra.state.base import ChangeSet
from infra.state.diff import SYMBOL, compare

CHANGE_TIMEOUT_S = 1800.0
CHANGE = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx"


def export_disk(res: Results, src: str, checkpoint: str, target: Path) -> None:
    """One checkpoint of a sandbox's disk as a standalone qcow2 (no backing file)."""
    argv = ["qemu-img", "convert", "-U", "-l", f"snapshot.name={checkpoint}", "-O", "qcow2"]
    r = res.timed(
        "export a checkpoint as a standalone disk (qemu-img convert)",
        "s",
        lambda: subprocess.run([*argv, src, str(target)], capture_output=True, text=True),
    )
    if r.returncode != 0:
        raise BenchError(f"qemu-img convert of {checkpoint} failed: {r.stderr.strip()}")


def checkpoint_with_capture(
    res: Results, b: Bench, s: FluidSettings, name: str, checkpoint: str, label: str
) -> float:
    """What `checkpoints.create(capture=True)` does, with the capture timed on its own.

    The capture (stored with the checkpoint) comes first, then the guest sync and the
    snapshot, as in checkpoints.create. Returns the capture's wall time.
    """
    rec = sandbox_records.record(name, s)
    index = captures.index_path(rec.image, rec.image_version, s)
    if not index.exists():
        b.fact(
            "C",
            f"C: no hash index for {rec.image}:{rec.image_version} yet: {name}'s "
            f"capture '{checkpoint}' hashes every file (later captures use the index)",
        )
    _, took = timed(
        res,
        f"{label}: capture '{checkpoint}'",
        "s",
        lambda: captures.capture(name, checkpoint=checkpoint, settings=s),
    )
    res.timed(
        f"  checkpoint '{checkpoint}': sync + snapshot (context)",
        "s",
        lambda: checkpoints.create(name, checkpoint, s, capture=False, actor="bench"),
    )
    return took


def captures_and_diff(
    res: Results, b: Bench, s: FluidSettings, name: str, row: str, label: str
) -> ChangeSet:
    """Capture before, the change, capture after, diff; the three timed parts (rows starting
    with `label`) add up to `row` (the change and the snapshots are context)."""
    t_before = checkpoint_with_capture(res, b, s, name, "before", label)
    r, _ = timed(
        res,
        "change: apt-get update + install nginx (context)",
        "s",
        lambda: sandboxes.run(name, CHANGE, timeout=CHANGE_TIMEOUT_S, actor="bench", settings=s),
    )
    if r.exit_status != 0:
        raise BenchError(
            f"the change exited {r.exit_status} in {name}:\n{r.stdout_text[-1000:]}\n"
            f"{r.stderr_text[-1000:]}"
        )
    t_after = checkpoint_with_capture(res, b, s, name, "after", label)

    def diff() -> ChangeSet:
        before, after = captures.load(name, "before", s), captures.load(name, "after", s)
        return compare(before, after, settings=s)

    changeset, t_diff = timed(res, f"{label}: diff: load both captures + compare", "s", diff)
    total = t_before + t_after + t_diff
    res.add(row, total, "s")
    log(f"{row}: {total:.2f} s")
    return changeset


def export_pair(res: Results, b: Bench, s: FluidSettings, name: str, i: int) -> tuple[Path, Path]:
    """Both checkpoints of a sandbox as standalone disks, for virt-diff."""
    disk = sandbox_records.record(name, s).disk_path
    pair = (b.root / f"vd-{i}-before.qcow2", b.root / f"vd-{i}-after.qcow2")
    export_disk(res, disk, "before", pair[0])
    export_disk(res, disk, "after", pair[1])
    return pair


def describe(cs: ChangeSet) -> str:
    """The change set in one line: its size, the packages and services it names."""

    def keys(kind: str) -> str:
        found = [f"{SYMBOL.get(c.action, '?')}{c.key}" for c in cs.of(kind)]
        shown = " ".join(found[:8]) + (f" (+{len(found) - 8} more)" if len(found) > 8 else "")
        return shown or "none"

    return (
        f"fluid change set: {len(cs.changes)} changes ({len(cs.of('files'))} files); "
        f"packages: {keys('packages')}; services: {keys('services')}"
    )


def part_c(res: Results, b: Bench, vd_runs: int) -> None:
    # The default path: an unnamed create takes a spare, whose base capture the refill took
    # while it waited (before anyone asked for it, as the spare itself was started).
    """Part C: both captures + diff per run (default path, named sandbox), then virt-diff."""
    sd = b.settings.model_copy(update={"spare_sandboxes": 1})
    pairs: list[tuple[Path, Path]] = []
    last: ChangeSet | None = None
    if WARM:
        log("C: starting the spare the first default-path create takes")
        spare_fill.fill(1, sd, say=fluid_says)
    else:
        b.problems.append("C's default path not measured: this fluid has no spares")
    for i in range(1, b.runs + 1):
        if WARM:
            wait_for_spare(res, b, time.perf_counter(), C_SPARE_WAIT)
            log(f"C run {i}/{b.runs}: default path, an unnamed create")
            sbx, _ = timed(
                res,
                "default: create -> SSH-ready (context)",
                "s",
                lambda: sandboxes.create(ttl_minutes=120, progress=fluid_says, settings=sd),
            )
            b.names.append(sbx.id)  # destroyed by the cleanup whatever happens next
            if getattr(sbx, "boot", None) != "spare":
                raise BenchError(f"C: the default-path create {sbx.id} did not take a spare")
            last = captures_and_diff(res, b, sd, sbx.id, C_FLUID, "default")
            if i <= vd_runs:
                pairs.append(export_pair(res, b, sd, sbx.id, i))
            res.timed("destroy", "ms", lambda sid=sbx.id: sandboxes.destroy(sid, sd))
        name = b.name(f"d{i}")
        log(f"C run {i}/{b.runs}: named sandbox {name}")
        sbx, _ = timed(
            res,
            "named: create -> SSH-ready (context)",
            "s",
            lambda name=name: sandboxes.create(
                name, ttl_minutes=120, progress=fluid_says, settings=b.settings
            ),
        )
        log(f"C: {name} is a {getattr(sbx, 'boot', 'cold')} start")
        named = captures_and_diff(res, b, b.settings, name, C_FLUID_NAMED, "named")
        last = last or named
        if i <= vd_runs and not WARM:
            pairs.append(export_pair(res, b, b.settings, name, i))
        res.timed("destroy", "ms", lambda name=name: sandboxes.destroy(name, b.settings))
    if WARM:
        log(f"C: stopped the spare(s) {', '.join(spares.clear(sd)) or '(none)'}")
    assert last is not None
    b.fact("C", describe(last))
    b.changeset = last

    env = {**os.environ, **LIBGUESTFS_ENV}
    for i, (before, after) in enumerate(pairs, 1):
        log(f"C: virt-diff {i}/{len(pairs)} (35-55 s under TCG)")
        argv = ["virt-diff", "--format=qcow2", "-a", str(before), "-A", str(after)]
        r, _ = timed(
            res,
            C_VIRT_DIFF,
            "s",
            lambda argv=argv: subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=VIRT_DIFF_TIMEOUT_S
            ),
        )
        # virt-diff exits 0 whatever it finds; anything else is a failure
        if r.returncode != 0:
            raise BenchError(f"virt-diff exited {r.returncode}: {r.stderr.strip()[-1500:]}")
        lines = r.stdout.splitlines()
        res.add("virt-diff output lines", len(lines), "lines")
        b.virt_diff_lines = len(lines)
        nginx = sum("nginx" in line for line in lines)
        b.fact(
            "C",
            f"virt-diff: {len(lines)} lines, {nginx} of them mention nginx; files only (no "
            "package or service entries: the install shows as /var/lib/dpkg/status "
            f"{'modified' if any('/var/lib/dpkg/status' in x for x in lines) else 'absent'})",
        )
    named, vd = median(res, C_FLUID_NAMED), median(res, C_VIRT_DIFF)
    if named and vd:
        b.fact(
            "C",
            f"named sandbox (context; the goal is the default path): {named:.2f} s, "
            f"{vd / named:.1f}x faster than virt-diff",
        )
