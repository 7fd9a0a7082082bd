"""Memory of a VM's qemu process and of the host, as the benchmarks report it."""

from __future__ import annotations

from pathlib import Path

from bench.results import BenchError

QEMU_PID_DIR = Path("/run/libvirt/qemu")


def qemu_pid(dom_name: str) -> int:
    """The pid of the domain's qemu process, from libvirt's pid file."""
    return int((QEMU_PID_DIR / f"{dom_name}.pid").read_text().strip())


def qemu_memory_mib(dom_name: str) -> tuple[float, float]:
    """(RSS, PSS) of the domain's qemu process in MiB, from smaps_rollup."""
    pid = qemu_pid(dom_name)
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0]) / 1024
    if set(values) != {"Rss", "Pss"}:
        raise BenchError(f"no Rss/Pss in /proc/{pid}/smaps_rollup of {dom_name}")
    return values["Rss"], values["Pss"]


def mem_available_mib() -> float:
    """The host's MemAvailable in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise BenchError("no MemAvailable in /proc/meminfo")


def free_used_mib(free_output: str) -> float:
    """The guest's used memory in MiB, from its `free -m` output."""
    for line in free_output.splitlines():
        if line.startswith("Mem:"):
            return float(line.split()[2])
    raise BenchError(f"unexpected `free -m` output: {free_output!r}")
