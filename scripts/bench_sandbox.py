#!/usr/bin/env python3
"""Benchmark fluid's sandbox life cycle on this host and print a markdown table.

Run from the repository root (as root, like fluid itself):

    .venv/bin/python scripts/bench_sandbox.py [--runs N] [--skip-build]

Everything it makes lives in a temporary directory under /var/lib (removed at the end) and
every VM it starts is destroyed again, also on errors, Ctrl-C and SIGTERM. VMs boot one at a
time. The sandboxes use a fresh FLUID_HOME (own database and SSH CA) but the configured
storage dir, so they boot from the real golden image.

Rows (wall-clock time.perf_counter; n = number of samples):

- image build: ``images.build(force=True)`` into a throwaway storage dir whose
  ``cache/debootstrap`` is a symlink to the real package cache, so no .deb is fetched again
  (only the suite's package index). One sample.
- overlay creation: ``qemu-img create -f qcow2 -b <golden disk>`` (10 samples).
- create -> SSH-ready: ``sandboxes.create()``; returns once SSH runs a command.
- first command after ready: ``sandboxes.run(id, "true")`` (new SSH connection + certificate).
- checkpoint: ``checkpoints.create(id, "bench")``: guest ``sync`` + internal snapshot with memory.
- restore -> SSH-ready: ``checkpoints.restore(id, "bench")``; returns once a command ran again.
- checkpoint delete: ``checkpoints.delete(id, "bench")``.
- destroy: ``sandboxes.destroy(id)``.
- qemu RSS after boot: VmRSS of the VM's qemu process (pid from /run/libvirt/qemu/), MiB,
  sampled right after the first command.
- guest used memory: the "used" column of ``free -m`` inside the guest, MiB.

The sandbox rows have --runs samples (default 3), one sandbox per run. On a shared host under
TCG the numbers are noisy; the header shows nproc and the load average at the start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_cleanup import destroy_quietly, leftovers
from bench_results import (
    BenchError,
    Results,
    interrupt_on_termination,
    log,
    signals_ignored,
)

from infra import checkpoints, images, sandboxes
from infra.errors import FluidError
from infra.libvirt_host import domain_type
from infra.settings import FluidSettings

OVERLAY_SAMPLES = 10
CHECKPOINT = "bench"
REAL_DEBOOTSTRAP_CACHE = Path("/var/lib/fluid/cache/debootstrap")
QEMU_PID_DIR = Path("/run/libvirt/qemu")


# --- image build ----------------------------------------------------------------------------


def bench_build(res: Results, root: Path, base: FluidSettings) -> None:
    storage = root / "storage"
    (storage / "cache").mkdir(parents=True)
    if not REAL_DEBOOTSTRAP_CACHE.is_dir():
        raise BenchError(
            f"{REAL_DEBOOTSTRAP_CACHE} does not exist: build the golden image "
            "once (`fluid image build`) or use --skip-build"
        )
    (storage / "cache" / "debootstrap").symlink_to(REAL_DEBOOTSTRAP_CACHE)
    settings = FluidSettings(
        home=root / "home",
        storage_dir=storage,
        mirror=base.mirror,
        suite=base.suite,
        image=base.image,
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


# --- overlays -------------------------------------------------------------------------------


def bench_overlays(res: Results, root: Path, golden: Path) -> None:
    d = root / "overlays"
    d.mkdir()
    for i in range(OVERLAY_SAMPLES):
        target = d / f"overlay-{i}.qcow2"
        start = time.perf_counter()
        r = subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(golden),
                "-F",
                "qcow2",
                str(target),
            ],
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - start
        if r.returncode != 0:
            raise BenchError(f"qemu-img create failed: {r.stderr.strip()}")
        res.add("overlay creation", elapsed * 1000.0, "ms")
        target.unlink()
    samples = res.rows["overlay creation"].samples
    log(f"overlay creation: median {statistics.median(samples):.1f} ms over {len(samples)}")


# --- sandboxes ------------------------------------------------------------------------------


def qemu_rss_mib(dom_name: str) -> float:
    pid = int((QEMU_PID_DIR / f"{dom_name}.pid").read_text().strip())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for qemu pid {pid} of {dom_name}")


def guest_used_mib(sandbox_id: str, settings: FluidSettings) -> float:
    r = sandboxes.run(sandbox_id, "free -m", timeout=60, actor="bench", settings=settings)
    for line in r.stdout_text.splitlines():
        if line.startswith("Mem:"):
            return float(line.split()[2])
    raise BenchError(f"unexpected `free -m` output: {r.stdout_text!r}")


def bench_sandbox(res: Results, name: str, settings: FluidSettings) -> None:
    """One sandbox through every step; the caller destroys it if a step fails."""
    sbx = res.timed(
        "create -> SSH-ready",
        "s",
        lambda: sandboxes.create(name, image=settings.image, ttl_minutes=30, settings=settings),
    )
    first = res.timed(
        "first command after ready",
        "ms",
        lambda: sandboxes.run(sbx.id, "true", timeout=60, actor="bench", settings=settings),
    )
    if first.exit_status != 0:
        raise BenchError(f"`true` exited {first.exit_status} in sandbox {sbx.id}")
    res.add("qemu RSS after boot", qemu_rss_mib(sbx.domain_name), "MiB")
    res.add("guest used memory (free -m)", guest_used_mib(sbx.id, settings), "MiB")
    log(
        f"memory: qemu RSS {res.rows['qemu RSS after boot'].samples[-1]:.0f} MiB, "
        f"guest used {res.rows['guest used memory (free -m)'].samples[-1]:.0f} MiB"
    )
    res.timed("checkpoint", "s", lambda: checkpoints.create(sbx.id, CHECKPOINT, settings))
    res.timed(
        "restore -> SSH-ready", "s", lambda: checkpoints.restore(sbx.id, CHECKPOINT, settings)
    )
    res.timed("checkpoint delete", "ms", lambda: checkpoints.delete(sbx.id, CHECKPOINT, settings))
    res.timed("destroy", "ms", lambda: sandboxes.destroy(sbx.id, settings))


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


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="sandboxes to boot (default 3)")
    parser.add_argument("--skip-build", action="store_true", help="skip the image build row")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if os.geteuid() != 0:
        print("error: run as root (debootstrap, libvirt's system URI, nftables)", file=sys.stderr)
        return 2

    interrupt_on_termination()
    # Own database and CA; the configured storage dir so the real golden image is used.
    base = FluidSettings(database_url=None, ca_private_key=None)
    root = Path(tempfile.mkdtemp(prefix="fluid-bench-", dir="/var/lib"))
    settings = base.model_copy(update={"home": root / "home"})
    tag = root.name.removeprefix("fluid-bench-").lower()
    tag = "".join(c for c in tag if c.isalnum())[:8] or "x"
    names = [f"bench-{tag}-{i}" for i in range(1, args.runs + 1)]
    res = Results()
    error: str | None = None
    code = 0
    try:
        golden = images.resolve(settings.image, settings=settings)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"host: nproc={os.cpu_count()} load={load} domain_type={domain_type(settings)} "
            f"guest={settings.memory_mib} MiB/{settings.vcpus} vCPU "
            f"tb_cache={settings.tb_cache_mib} MiB image={golden.name} {golden.version}",
            flush=True,
        )
        if not args.skip_build:
            bench_build(res, root, settings)
        bench_overlays(res, root, golden.disk_path)
        for i, name in enumerate(names, 1):
            log(f"run {i}/{len(names)}: sandbox {name}")
            try:
                bench_sandbox(res, name, settings)
            except BaseException:
                with signals_ignored():  # before anything else; failures are reported below
                    destroy_quietly(name, settings)
                raise
    except KeyboardInterrupt as e:
        error, code = f"interrupted ({e or 'Ctrl-C'})", 130
    except Exception as e:  # any failure ends the run, with its message
        error, code = f"{type(e).__name__}: {e}", 1
    finally:
        with signals_ignored():
            problems = [p for n in names if (p := destroy_quietly(n, settings))]
            try:
                problems += [f"leaked {x}" for x in leftovers(names, settings)]
            except Exception as e:
                problems.append(f"cannot check for leftovers: {e}")
            if p := remove_tree(root):
                problems.append(p)
    if res.rows:
        print(res.table(), flush=True)
    if error:
        print(f"error: {error}", file=sys.stderr)
    for p in problems:
        print(f"error: cleanup: {p}", file=sys.stderr)
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
