"""Remove all a bench_sandbox run made: sandboxes, virt-clone domains, warm slots, its tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.cleanup import destroy_quietly, leftovers, remove_store_domains
from bench.results import log
from bench.sandbox.context import Bench, warm_slots
from infra.machines import sandboxes, spares


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
