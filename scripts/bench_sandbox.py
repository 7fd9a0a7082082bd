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
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import libvirt
from bench_cleanup import destroy_quietly, leftovers, remove_store_domains
from bench_results import (
    BenchError,
    Results,
    interrupt_on_termination,
    log,
    signals_ignored,
)

from infra.errors import FluidError
from infra.host import domains, images, ports
from infra.host.libvirt_host import connect, domain_type, remove_domain
from infra.machines import checkpoints, sandbox_records, sandboxes, spare_fill, spares
from infra.settings import FluidSettings
from infra.state import capture as captures
from infra.state.base import ChangeSet
from infra.state.diff import SYMBOL, compare
from infra.transport.ssh_ca import authority

try:  # warm starts (issue 6); without them part A's warm rows are reported as not measured
    from infra.machines import warm_slots
except ImportError:  # pragma: no cover - depends on the fluid version
    warm_slots = None  # type: ignore[assignment]
WARM = warm_slots is not None and hasattr(warm_slots, "fill")

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
FLUID = REPO / ".venv" / "bin" / "fluid"
PARTS = ("A", "B", "C")
REAL_DEBOOTSTRAP_CACHE = Path("/var/lib/fluid/cache/debootstrap")
QEMU_PID_DIR = Path("/run/libvirt/qemu")
OVERLAY_SAMPLES = 10
CLI_TIMEOUT_S = 900.0
CLONE_READY_TIMEOUT_S = 300.0
CHANGE_TIMEOUT_S = 1800.0
VIRT_DIFF_TIMEOUT_S = 1800.0
CONCURRENT = 8
DEFAULT_WARM_SLOTS = FluidSettings.model_fields["warm_slots"].default

WARM_GOAL_S = 3.0
WARM_RATIO = 5.0
DIFF_RATIO = 10.0

A_WARM = "warm start (default: a spare taken): create + exec"
A_SLOT = "warm start from a slot (FLUID_SPARE_SANDBOXES=0): create + exec"
A_REFILL = "  next spare waiting, after a take (background refill)"
A_COLD = "cold boot (FLUID_WARM_SLOTS=0): create + exec"
A_CLONE = "virt-clone full copy + boot + SSH command"
CLI_STARTUP = "CLI start-up: python + `fluid sandbox`'s imports (no VM)"
C_FLUID = "fluid, default (a spare taken): capture before + capture after + diff"
C_FLUID_NAMED = "fluid, named sandbox (first capture walks every file): before + after + diff"
C_SPARE_WAIT = "  default: waited for a spare before the create (0: one was waiting)"
C_VIRT_DIFF = "virt-diff -a before -A after"
CHANGE = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx"
LIBGUESTFS_ENV = {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}


class SetupError(BenchError):
    """The host cannot run the benchmark (exit status 2); the message says how to fix it."""


@dataclass
class Bench:
    """What every part shares: the temporary tree, settings, names and what to report."""

    root: Path
    settings: FluidSettings
    tag: str
    runs: int
    golden: images.ImageManifest
    names: list[str] = field(default_factory=list)
    facts: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    clone: VirtCloneBench | None = None
    changeset: ChangeSet | None = None  # C's last change set, for the goals
    virt_diff_lines: int | None = None

    def name(self, suffix: str) -> str:
        """A sandbox name of this run, remembered so the cleanup destroys it."""
        n = f"b{self.tag}-{suffix}"
        self.names.append(n)
        return n

    def fact(self, part: str, line: str) -> None:
        self.facts.setdefault(part, []).append(line)
        log(line)


def timed(res: Results, step: str, unit: str, fn: Callable[[], T]) -> tuple[T, float]:
    """res.timed, also returning the sample just recorded."""
    out = res.timed(step, unit, fn)
    return out, res.rows[step].samples[-1]


def fluid_says(msg: str) -> None:
    """fluid's progress lines (they say why a start was warm or cold)."""
    log(f"  fluid: {msg}")


def median(res: Results, step: str) -> float | None:
    row = res.rows.get(step)
    return statistics.median(row.samples) if row and row.samples else None


# --- the CLI as a subprocess ----------------------------------------------------------------


def cli_env(settings: FluidSettings, warm: int | None, spares: int | None = None) -> dict[str, str]:
    """The benchmark's FLUID_HOME for the CLI; FLUID_WARM_SLOTS and FLUID_SPARE_SANDBOXES
    unset (defaults) or as given."""
    drop = {
        "FLUID_HOME",
        "FLUID_DATABASE_URL",
        "FLUID_CA_PRIVATE_KEY",
        "FLUID_WARM_SLOTS",
        "FLUID_SPARE_SANDBOXES",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["FLUID_HOME"] = str(settings.home)
    env["FLUID_STORAGE_DIR"] = str(settings.storage_dir)
    if warm is not None:
        env["FLUID_WARM_SLOTS"] = str(warm)
    if spares is not None:
        env["FLUID_SPARE_SANDBOXES"] = str(spares)
    return env


def fluid(
    args: list[str], env: dict[str, str], timeout: float = CLI_TIMEOUT_S, stream: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `fluid ARGS`; BenchError with its output when it fails."""
    r = subprocess.run(
        [str(FLUID), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=None if stream else subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise BenchError(
            f"`fluid {' '.join(args)}` exited {r.returncode}:\n{(r.stderr or '')[-1500:]}"
            f"{r.stdout[-500:]}"
        )
    return r


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


# --- memory ---------------------------------------------------------------------------------


def qemu_pid(dom_name: str) -> int:
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
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise BenchError("no MemAvailable in /proc/meminfo")


def free_used_mib(free_output: str) -> float:
    for line in free_output.splitlines():
        if line.startswith("Mem:"):
            return float(line.split()[2])
    raise BenchError(f"unexpected `free -m` output: {free_output!r}")


def domain_of(name: str, settings: FluidSettings) -> str:
    """The sandbox's libvirt domain as its record says (warm sandboxes are fluid-pool-*)."""
    return sandboxes.get(name, settings).domain_name


# --- tools installed on demand --------------------------------------------------------------


def ensure_tool(tool: str, package: str, extra: list[str] | None = None) -> None:
    """Install Debian's `package` (no recommends) if `tool` is missing; SetupError on failure."""
    if shutil.which(tool):
        return
    pkgs = [package, *(extra or [])]
    log(f"{tool} is missing: apt-get install -y --no-install-recommends {' '.join(pkgs)}")
    r = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *pkgs],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
    )
    if r.returncode != 0 or not shutil.which(tool):
        raise SetupError(
            f"could not install {' '.join(pkgs)} for {tool}: {(r.stderr or r.stdout)[-1500:]}"
        )


def ensure_virt_diff() -> None:
    """libguestfs-tools for the comparison only; its appliance needs a kernel in /boot."""
    if shutil.which("virt-diff"):
        return
    print(
        "warning: installing Debian's libguestfs-tools (and linux-image-amd64, which libguestfs "
        "recommends: supermin builds its appliance from the kernel in /boot) for the virt-diff "
        "comparison; this installs a kernel and rewrites the host's initrd. "
        "`apt-get purge libguestfs-tools linux-image-amd64 && apt-get autoremove` undoes it.",
        file=sys.stderr,
        flush=True,
    )
    ensure_tool("virt-diff", "libguestfs-tools", ["linux-image-amd64"])


# --- A: warm start, cold boot, virt-clone ---------------------------------------------------


class VirtCloneBench:
    """A template domain defined like a fluid sandbox, full-copied with virt-clone per run."""

    def __init__(self, b: Bench) -> None:
        self.b = b
        self.dir = b.root / "virt-clone"
        self.template = f"fluid-bench-{b.tag}-vc-tmpl"
        self.instance = f"b{b.tag}-vc"  # the guest's fluid.sandbox id: principal fluid-<id>
        self.console = self.dir / "console.log"
        self.port = 0
        self.clones: list[str] = []
        self.pools_before: set[str] = set()

    def setup(self) -> None:
        """Template disk (a copy of the golden disk, untimed) and template domain."""
        s, golden = self.b.settings, self.b.golden
        self.dir.mkdir()
        self.dir.chmod(0o755)  # qemu runs as libvirt-qemu and must reach the disk
        disk = self.dir / "template.qcow2"
        shutil.copyfile(golden.disk_path, disk)
        conn = connect(s)
        try:
            self.pools_before = {p.name() for p in conn.listAllStoragePools()}
            now = datetime.now(UTC)
            ca = authority(s)
            with ports.allocation_lock(s.storage_dir):
                # The port is in the template's XML, so other fluid processes keep off it.
                self.port = ports.pick(s.port_range, ports.reserved(conn, s))
                spec = domains.DomainSpec(
                    name=self.template,
                    metadata=domains.FluidMetadata(
                        kind="sandbox",
                        id=self.instance,
                        created_at=now,
                        expires_at=now + timedelta(hours=3),
                        store=s.store_id,
                    ),
                    domain_type=domain_type(s),
                    memory_mib=s.memory_mib,
                    vcpus=s.vcpus,
                    tb_cache_mib=s.tb_cache_mib,
                    disk_path=disk,
                    console_log=self.console,
                    ssh_port=self.port,
                    network="nat",
                    kernel=golden.kernel_path,
                    initrd=golden.initrd_path,
                    cmdline=domains.kernel_cmdline(
                        golden.cmdline or "", self.instance, ca.public_key_line()
                    ),
                )
                conn.defineXML(domains.render(spec))
        finally:
            conn.close()
        log(f"virt-clone template {self.template}: {disk.stat().st_size / 2**20:.0f} MiB disk")

    def run_once(self, res: Results, i: int) -> None:
        """virt-clone (full copy), start, wait until an SSH command ran; then remove the clone."""
        s = self.b.settings
        clone = f"fluid-bench-{self.b.tag}-vc-{i}"
        disk = self.dir / f"clone-{i}.qcow2"
        self.clones.append(clone)
        self.console.unlink(missing_ok=True)  # the host key is read from this log
        conn = connect(s)
        try:
            start = time.perf_counter()
            r = subprocess.run(
                [
                    "virt-clone",
                    "--connect",
                    s.libvirt_uri,
                    "--original",
                    self.template,
                    "--name",
                    clone,
                    "--file",
                    str(disk),
                    "--quiet",
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            copied = time.perf_counter()
            if r.returncode != 0:
                raise BenchError(f"virt-clone failed: {(r.stderr or r.stdout).strip()[-1500:]}")
            dom = conn.lookupByName(clone)
            dom.create()
            sandboxes.wait_for_ssh(
                f"virt-clone {clone}",
                self.instance,
                self.port,
                self.console,
                dom,
                s,
                timeout=CLONE_READY_TIMEOUT_S,
            )
            end = time.perf_counter()
            res.add(A_CLONE, end - start, "s")
            res.add("  virt-clone (full disk copy)", copied - start, "s")
            res.add("  start + boot + SSH command (virt-clone)", end - copied, "s")
            log(
                f"{A_CLONE}: {end - start:.2f} s (virt-clone {copied - start:.2f} s, "
                f"{disk.stat().st_size / 2**20:.0f} MiB copied)"
            )
            rss, pss = qemu_memory_mib(clone)
            res.add("qemu RSS after ready (virt-clone)", rss, "MiB")
            res.add("qemu PSS after ready (virt-clone)", pss, "MiB")
        finally:
            try:
                remove_domain(conn, clone)
            finally:
                conn.close()
                disk.unlink(missing_ok=True)

    def cleanup(self) -> list[str]:
        """Remove every clone, the template and any storage pool virt-clone defined."""
        problems: list[str] = []
        try:
            conn = connect(self.b.settings)
        except Exception as e:
            return [f"cannot reach libvirt to remove the virt-clone domains: {e}"]
        try:
            for name in [*self.clones, self.template]:
                try:
                    if remove_domain(conn, name) and name != self.template:
                        log(f"cleanup: removed domain {name}")
                except Exception as e:
                    problems.append(f"could not remove domain {name}: {e}")
            for pool in conn.listAllStoragePools():
                if pool.name() in self.pools_before:
                    continue
                if str(self.b.root) not in pool.XMLDesc(0):
                    problems.append(f"storage pool {pool.name()} appeared during the run (kept)")
                    continue
                try:
                    if pool.isActive():
                        pool.destroy()
                    if pool.isPersistent():
                        pool.undefine()
                    log(f"cleanup: removed storage pool {pool.name()} (defined by virt-clone)")
                except Exception as e:
                    problems.append(f"could not remove storage pool {pool.name()}: {e}")
        finally:
            conn.close()
        return problems


def bench_overlays(res: Results, b: Bench) -> None:
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


def wait_for_spare(res: Results, b: Bench, since: float, row: str = A_REFILL) -> None:
    """Wait until a spare waits; unless `since` is 0, the time from `since` is a `row`."""
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while not spares.list_spares(b.settings, state=spares.WAITING):
        if time.monotonic() > deadline:
            raise BenchError(f"no spare waiting {CLI_TIMEOUT_S:.0f} s after a take")
        time.sleep(0.2)
    if since:
        res.add(row, time.perf_counter() - since, "s")


def part_a(res: Results, b: Bench) -> None:
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


# --- B: eight at once -----------------------------------------------------------------------


def part_b(res: Results, b: Bench) -> None:
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


# --- C: captures + diff vs virt-diff --------------------------------------------------------


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


def warm_up_libguestfs(env: dict[str, str]) -> None:
    """Build libguestfs' cached appliance once, untimed, so virt-diff is timed warm."""
    cache = Path("/var/tmp") / f".guestfs-{os.getuid()}" / "appliance.d"
    if cache.is_dir():
        return
    log("libguestfs: first use, building its appliance (untimed)")
    start = time.perf_counter()
    r = subprocess.run(
        ["guestfish", "--ro", "-a", "/dev/null", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=VIRT_DIFF_TIMEOUT_S,
    )
    if r.returncode != 0:
        raise SetupError(
            f"libguestfs cannot start its appliance: {r.stderr.strip()[-1500:]}; "
            "`libguestfs-test-tool` shows why"
        )
    log(f"libguestfs appliance ready in {time.perf_counter() - start:.1f} s")


# --- image build (optional) -----------------------------------------------------------------


def bench_build(res: Results, b: Bench) -> None:
    storage = b.root / "storage"
    (storage / "cache").mkdir(parents=True)
    if not REAL_DEBOOTSTRAP_CACHE.is_dir():
        raise SetupError(
            f"{REAL_DEBOOTSTRAP_CACHE} does not exist: build the golden image once "
            "(`fluid image build`) or leave out --build"
        )
    (storage / "cache" / "debootstrap").symlink_to(REAL_DEBOOTSTRAP_CACHE)
    base = b.settings
    settings = FluidSettings(
        home=b.root / "build-home",
        storage_dir=storage,
        mirror=base.mirror,
        suite=base.suite,
        image=base.image,
        database_url=None,
        ca_private_key=None,
    )
    log(f"image build into {storage}; a few minutes under load")

    def build() -> images.ImageManifest:
        try:
            return images.build(
                base.image, force=True, settings=settings, progress=lambda m: log(f"  {m}")
            )
        except FluidError as e:
            raise BenchError(f"image build failed: {e}") from e

    res.timed("image build", "s", build)


# --- goals ----------------------------------------------------------------------------------


@dataclass
class Goal:
    goal: str
    measured: str
    ratio: str
    ok: bool


def _ratio_goal(goal: str, fast: float | None, slow: float | None, need: float, names: str) -> Goal:
    if fast is None or slow is None:
        return Goal(goal, "not measured", "-", False)
    ratio = slow / fast
    return Goal(goal, f"{names}: {fast:.2f} s vs {slow:.2f} s", f"{ratio:.1f}x", ratio >= need)


def reported_goal(b: Bench) -> Goal:
    """fluid's change set names the nginx package and its service; virt-diff has files only."""
    goal = "C: packages and services reported (virt-diff: files only)"
    cs = b.changeset
    if cs is None:
        return Goal(goal, "not measured", "-", False)
    pkgs = [c.key for c in cs.of("packages")]
    svcs = [c.key for c in cs.of("services")]
    shown = f"fluid: packages {', '.join(pkgs) or 'none'}; services {', '.join(svcs) or 'none'}"
    if b.virt_diff_lines is not None:
        shown += f"; virt-diff: {b.virt_diff_lines} file lines"
    ok = "nginx" in pkgs and any(k.startswith("nginx") for k in svcs)
    return Goal(goal, shown, f"{len(cs.changes)} changes", ok)


def goals(parts: set[str], res: dict[str, Results], b: Bench | None) -> list[Goal]:
    out: list[Goal] = []
    if "A" in parts:
        a = res["A"]
        warm, cold, clone = median(a, A_WARM), median(a, A_COLD), median(a, A_CLONE)
        out.append(
            Goal(
                f"A: warm create -> SSH-ready median <= {WARM_GOAL_S:.0f} s",
                "not measured",
                "-",
                False,
            )
            if warm is None
            else Goal(
                f"A: warm create -> SSH-ready median <= {WARM_GOAL_S:.0f} s",
                f"{warm:.2f} s",
                f"{warm / WARM_GOAL_S:.2f}x the limit",
                warm <= WARM_GOAL_S,
            )
        )
        out.append(
            _ratio_goal(
                f"A: warm >= {WARM_RATIO:.0f}x faster than fluid's cold boot",
                warm,
                cold,
                WARM_RATIO,
                "warm vs cold",
            )
        )
        out.append(
            _ratio_goal(
                f"A: warm >= {WARM_RATIO:.0f}x faster than virt-clone + boot",
                warm,
                clone,
                WARM_RATIO,
                "warm vs virt-clone",
            )
        )
    if "B" in parts:
        row = res["B"].rows.get("sandboxes answering")
        n = int(row.samples[-1]) if row else 0
        rss = median(res["B"], "qemu RSS per sandbox")
        pss = median(res["B"], "qemu PSS per sandbox")
        mem = f", qemu RSS {rss:.0f} / PSS {pss:.0f} MiB each" if rss and pss else ""
        out.append(
            Goal(
                f"B: {CONCURRENT} sandboxes running at once all answer",
                f"{n} of {CONCURRENT} answered{mem}",
                "-",
                n == CONCURRENT,
            )
        )
    if "C" in parts:
        out.append(
            _ratio_goal(
                f"C: both captures + diff >= {DIFF_RATIO:.0f}x faster than virt-diff",
                median(res["C"], C_FLUID) or median(res["C"], C_FLUID_NAMED),
                median(res["C"], C_VIRT_DIFF),
                DIFF_RATIO,
                "fluid vs virt-diff",
            )
        )
        if b is not None:
            out.append(reported_goal(b))
    return out


def goals_table(gs: list[Goal]) -> str:
    rows = [("goal", "measured", "ratio", "pass")] + [
        (g.goal, g.measured, g.ratio, "yes" if g.ok else "NO") for g in gs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    render = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    render.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(render)


# --- cleanup --------------------------------------------------------------------------------


def remove_tree(root: Path) -> str | None:
    """Remove the temporary tree unless something is still mounted inside it."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    inside = [m for m in mounts if m == str(root) or m.startswith(f"{root}/")]
    for m in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", m], capture_output=True)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    if any(m.startswith(f"{root}/") for m in mounts):
        return f"left {root} in place: something is still mounted inside it"
    link = root / "storage" / "cache" / "debootstrap"
    if link.is_symlink():
        link.unlink()  # never descend into the real package cache
    shutil.rmtree(root, ignore_errors=True)
    return f"could not remove {root} completely" if root.exists() else None


def cleanup(b: Bench) -> list[str]:
    """Destroy every sandbox, clone, warm slot and file of the run; what could not be."""
    s = b.settings
    problems: list[str] = []
    try:
        recorded = [x.id for x in sandboxes.list_sandboxes(s).sandboxes]
    except Exception as e:
        recorded = []
        problems.append(f"cannot list the benchmark's sandboxes: {e}")
    ids = list(dict.fromkeys([*b.names, *recorded]))
    problems += [p for i in ids if (p := destroy_quietly(i, s))]
    if b.clone is not None:
        problems += b.clone.cleanup()
    if warm_slots is not None:
        try:
            spares.clear(settings=s)
            warm_slots.clear(settings=s)
            log("cleanup: stopped the spares, cleared the warm slots")
        except Exception as e:
            problems.append(f"could not clear the warm slots: {e}")
    try:
        problems += [f"leaked {x}" for x in leftovers(ids, s)]
        problems += [f"leaked domain {d} (removed now)" for d in remove_store_domains(s)]
    except Exception as e:
        problems.append(f"cannot check for leftovers: {e}")
    pool_dir = warm_slots.pool_dir(s) if warm_slots else s.storage_dir / "pool" / s.store_id
    if pool_dir.exists():
        problems.append(f"leaked {pool_dir} (removed now)")
        shutil.rmtree(pool_dir, ignore_errors=True)
    if p := remove_tree(b.root):
        problems.append(p)
    return problems


# --- main -----------------------------------------------------------------------------------


def parse_parts(value: str) -> set[str]:
    parts = {p.strip().upper() for p in value.split(",") if p.strip()}
    if not parts or not parts <= set(PARTS):
        raise argparse.ArgumentTypeError(f"use a comma-separated subset of {','.join(PARTS)}")
    return parts


def ours(dom: libvirt.virDomain, settings: FluidSettings) -> bool:
    """A domain of this run (sandboxes, slots and virt-clone domains carry its store id)."""
    meta = domains.read_metadata(dom)
    return meta is not None and meta.store == settings.store_id


def other_vms(settings: FluidSettings) -> int | None:
    """Running domains that are not this run's, or None when libvirt cannot say."""
    try:
        conn = connect(settings)
        try:
            active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            return sum(1 for d in active if not ours(d, settings))
        finally:
            conn.close()
    except Exception:
        return None


def busy_line(settings: FluidSettings, when: str) -> str:
    """Load average and other running VMs: the figures are only as quiet as the host was."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    n = other_vms(settings)
    return f"{when}: load {load}; other running VMs on this host: {'?' if n is None else n}"


def host_line(settings: FluidSettings, golden: images.ImageManifest) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    total = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return (
        f"host: nproc={os.cpu_count()} mem={int(total) / 2**20:.1f} GiB load={load} "
        f"domain_type={domain_type(settings)} guest={settings.memory_mib} MiB/"
        f"{settings.vcpus} vCPU tb_cache={settings.tb_cache_mib} MiB "
        f"image={golden.name}:{golden.version} warm_slots={settings.warm_slots} (default) "
        f"warm starts: {'yes' if WARM else 'not in this fluid'}"
    )


def main(argv: list[str] | None = None) -> int:
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
    if os.geteuid() != 0:
        print("error: run as root (libvirt's system URI, nftables, apt)", file=sys.stderr)
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
    except KeyboardInterrupt as e:
        error, code = f"interrupted ({str(e) or 'Ctrl-C'})", 130
    except SetupError as e:
        error, code = f"setup: {e}", 2
    except Exception as e:  # any failure ends the run, with its message
        error, code = f"{type(e).__name__}: {e}", 1
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
    if error:
        print(f"error: {error}", file=sys.stderr)
    for p in problems:
        print(f"error: cleanup: {p}", file=sys.stderr)
        code = code or 1
    if any(not g.ok for g in gs):
        print("error: a goal was missed (see the goals table)", file=sys.stderr)
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
