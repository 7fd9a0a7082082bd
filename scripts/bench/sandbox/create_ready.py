"""Part A of bench_sandbox: create -> SSH-ready for a warm start (a spare, a slot), a cold boot
and virt-clone, with the life-cycle rows measured on the warm sandboxes."""

from __future__ import annotations

import json
import subprocess
import time

from bench.fluid_cli import FLUID, REPO, cli_env, fluid
from bench.memory import qemu_memory_mib
from bench.results import BenchError, Results, log, timed
from bench.sandbox.context import (
    A_COLD,
    A_SLOT,
    A_WARM,
    CLI_STARTUP,
    DEFAULT_WARM_SLOTS,
    WARM,
    Bench,
    domain_of,
    fluid_says,
    wait_for_spare,
)
from infra.machines import checkpoints, sandboxes, spares
from infra.settings import FluidSettings

OVERLAY_SAMPLES = 10


def create_exec(
    res: Results, label: str, name: str | None, env: dict[str, str], boot: str, b: Bench
) -> dict:
    """`fluid sandbox create --json` + `fluid sandbox exec ID -- true`, one sample of `label`.

    Without a `name` the create is unnamed (only those take spares) and the id it printed is
    remembered for the cleanup.
    """
    start = time.perf_counter()
    created = fluid(["sandbox", "create", *(["--name", name] if name else []), "--json"], env)
    mid = time.perf_counter()
    sbx = json.loads(created.stdout)
    if name is None:
        b.names.append(sbx["id"])
    fluid(["sandbox", "exec", sbx["id"], "--", "true"], env, timeout=300)
    end = time.perf_counter()
    # A fluid without warm starts has no "boot" field and only ever boots cold.
    got = sbx.get("boot", "cold")
    if got != boot:
        raise BenchError(
            f"{label}: fluid reported a {got!r} start for {name}, this row measures {boot!r} "
            f"starts; create said:\n{created.stderr[-800:]}"
        )
    res.add(label, end - start, "s")
    res.add(f"  `fluid sandbox create --json` ({boot})", mid - start, "s")
    res.add(f"  `fluid sandbox exec ID -- true` ({boot})", end - mid, "s")
    for line in created.stderr.splitlines():
        fluid_says(line)  # e.g. "ready in 0.9 s (warm start)": fluid's own time, CLI excluded
    log(f"{label}: {end - start:.2f} s (create {mid - start:.2f} s, exec {end - mid:.2f} s)")
    return sbx


def bench_overlays(res: Results, b: Bench) -> None:
    """`qemu-img create` of an overlay on the golden disk, OVERLAY_SAMPLES times."""
    d = b.root / "overlays"
    d.mkdir()
    for i in range(OVERLAY_SAMPLES):
        target = d / f"overlay-{i}.qcow2"
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(b.golden.disk_path)]
        start = time.perf_counter()
        r = subprocess.run([*argv, "-F", "qcow2", str(target)], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if r.returncode != 0:
            raise BenchError(f"qemu-img create failed: {r.stderr.strip()}")
        res.add("overlay creation (qemu-img create -b golden)", elapsed * 1000.0, "ms")
        target.unlink()


def bench_cli_startup(res: Results) -> None:
    """What every `fluid sandbox` command pays before it does anything: Python and imports."""
    argv = [str(FLUID.parent / "python"), "-c", "import cli.main, infra.machines.sandboxes"]
    for _ in range(OVERLAY_SAMPLES):
        start = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
        elapsed = time.perf_counter() - start
        if r.returncode != 0:
            raise BenchError(f"importing fluid's CLI failed: {r.stderr.strip()[-800:]}")
        res.add(CLI_STARTUP, elapsed * 1000.0, "ms")


def warm_extras(res: Results, name: str, settings: FluidSettings) -> None:
    """The life-cycle rows on a warm sandbox: memory, a command, checkpoint, restore."""
    rss, pss = qemu_memory_mib(domain_of(name, settings))
    res.add("qemu RSS after ready (warm)", rss, "MiB")
    res.add("qemu PSS after ready (warm)", pss, "MiB")
    r = res.timed(
        "command over SSH in process (sandboxes.run)",
        "ms",
        lambda: sandboxes.run(name, "true", timeout=60, actor="bench", settings=settings),
    )
    if r.exit_status != 0:
        raise BenchError(f"`true` exited {r.exit_status} in sandbox {name}")
    res.timed(
        "checkpoint (no capture)",
        "s",
        lambda: checkpoints.create(name, "bench", settings, capture=False, actor="bench"),
    )
    res.timed(
        "checkpoint restore -> SSH-ready", "s", lambda: checkpoints.restore(name, "bench", settings)
    )
    res.timed("checkpoint delete", "ms", lambda: checkpoints.delete(name, "bench", settings))


def part_a(res: Results, b: Bench) -> None:
    """Part A: create -> SSH-ready, warm (spare, slot), cold and virt-clone, interleaved."""
    s = b.settings
    bench_overlays(res, b)
    bench_cli_startup(res)
    assert b.clone is not None  # made in main(), with the setup checks
    b.clone.setup()
    warm_env, slot_env, cold_env = cli_env(s, None), cli_env(s, None, 0), cli_env(s, 0, 0)
    warm_ok = WARM
    if warm_ok:
        n = DEFAULT_WARM_SLOTS
        log(f"fluid pool fill: preparing the {n} warm slots (default), minutes under TCG")
        timed(
            res,
            f"warm slots: `fluid pool fill` ({n} slots and the spare, default)",
            "s",
            lambda: fluid(["pool", "fill"], warm_env, timeout=3600, stream=True),
        )
    else:
        b.problems.append(
            "warm start not measured: this fluid has no warm_slots.fill (issue 6, item 1)"
        )
    taken_at = 0.0
    for i in range(1, b.runs + 1):
        if warm_ok:
            wait_for_spare(res, b, taken_at)
            log(f"A run {i}/{b.runs}: warm start, taking a spare")
            sbx = create_exec(res, A_WARM, None, warm_env, "spare", b)
            taken_at = time.perf_counter()
            warm_extras(res, sbx["id"], s)
            res.timed("destroy (warm)", "ms", lambda sid=sbx["id"]: sandboxes.destroy(sid, s))
            wait_for_spare(res, b, taken_at)
            taken_at = 0.0
            name = b.name(f"w{i}")
            log(f"A run {i}/{b.runs}: warm start from a slot {name}")
            create_exec(res, A_SLOT, name, slot_env, "warm", b)
            res.timed("destroy (warm)", "ms", lambda name=name: sandboxes.destroy(name, s))
        name = b.name(f"c{i}")
        log(f"A run {i}/{b.runs}: cold boot {name}")
        create_exec(res, A_COLD, name, cold_env, "cold", b)
        rss, pss = qemu_memory_mib(domain_of(name, s))
        res.add("qemu RSS after ready (cold)", rss, "MiB")
        res.add("qemu PSS after ready (cold)", pss, "MiB")
        res.timed("destroy (cold)", "ms", lambda name=name: sandboxes.destroy(name, s))
        log(f"A run {i}/{b.runs}: virt-clone")
        b.clone.run_once(res, i)
    if warm_ok:
        stopped = spares.clear(s)  # B and C count on every slot being free
        log(f"A: stopped the spare(s) {', '.join(stopped) or '(none)'}")
