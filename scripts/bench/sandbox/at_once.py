"""Part B of bench_sandbox: eight sandboxes at once, each answering a command, with their
memory and the host's."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from bench.fluid_cli import cli_env, fluid
from bench.host import other_vms
from bench.memory import free_used_mib, mem_available_mib, qemu_memory_mib
from bench.results import Results, log, timed
from bench.sandbox.context import CONCURRENT, WARM, Bench, domain_of, fluid_says
from infra.machines import sandboxes


def part_b(res: Results, b: Bench) -> None:
    """Part B: eight sandboxes at once, one command in all, their memory and the host's."""
    s8 = b.settings.model_copy(update={"warm_slots": CONCURRENT})
    if not WARM:
        b.problems.append("B ran without warm slots: this fluid has no warm_slots.fill")
    else:
        log(f"warm slots: filling {CONCURRENT} (FLUID_WARM_SLOTS={CONCURRENT})")
        timed(
            res,
            f"warm slots: `fluid pool fill` ({CONCURRENT} slots)",
            "s",
            lambda: fluid(["pool", "fill"], cli_env(s8, CONCURRENT, 0), timeout=3600, stream=True),
        )
    before, others_before = mem_available_mib(), other_vms(s8)
    names = [b.name(f"m{i}") for i in range(1, CONCURRENT + 1)]
    boots: list[str] = []
    for i, name in enumerate(names, 1):
        sbx, _ = timed(
            res,
            "create -> SSH-ready (sandboxes.create)",
            "s",
            lambda name=name: sandboxes.create(
                name, ttl_minutes=60, progress=fluid_says, settings=s8
            ),
        )
        boots.append(getattr(sbx, "boot", "cold"))
        log(f"B: {i}/{CONCURRENT} running ({boots[-1]} start)")
    after, others_after = mem_available_mib(), other_vms(s8)

    def ask(name: str) -> tuple[str, str | None, str]:
        """(name, `free -m` output or None, why not)."""
        try:
            r = sandboxes.run(
                name,
                "cat /proc/sys/kernel/random/boot_id; free -m",
                timeout=120,
                actor="bench",
                settings=s8,
            )
        except Exception as e:  # one silent sandbox must not hide the others' answers
            return name, None, f"{type(e).__name__}: {e}"
        if r.exit_status != 0:
            return name, None, f"exit status {r.exit_status}: {r.stderr_text[-300:]}"
        return name, r.stdout_text, ""

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        answers = list(pool.map(ask, names))
    res.add(f"one command in all {CONCURRENT} at once (wall)", time.perf_counter() - start, "s")
    answered = 0
    for name, out, why in answers:
        if out is None:
            log(f"B: {name} did not answer: {why}")
            continue
        answered += 1
        res.add("guest used memory (free -m)", free_used_mib(out), "MiB")
        rss, pss = qemu_memory_mib(domain_of(name, s8))
        res.add("qemu RSS per sandbox", rss, "MiB")
        res.add("qemu PSS per sandbox", pss, "MiB")
    pss_row = res.rows.get("qemu PSS per sandbox")
    if pss_row:
        res.add(f"qemu PSS of all {len(pss_row.samples)} together", sum(pss_row.samples), "MiB")
    res.add("sandboxes answering", answered, "of 8")
    res.add("host MemAvailable before", before, "MiB")
    res.add(f"host MemAvailable with {CONCURRENT} running", after, "MiB")
    res.add("host MemAvailable drop per sandbox", (before - after) / CONCURRENT, "MiB")
    warm = boots.count("warm")
    b.fact(
        "B",
        f"B: {answered} of {CONCURRENT} answered; {warm} warm and {CONCURRENT - warm} cold "
        f"starts; host MemAvailable {before:.0f} -> {after:.0f} MiB "
        f"({(before - after) / CONCURRENT:.0f} MiB per sandbox; other VMs on the host: "
        f"{others_before} before, {others_after} after, so the drop is only meaningful when "
        "those match)",
    )
    for name in names:
        res.timed("destroy", "ms", lambda name=name: sandboxes.destroy(name, s8))
