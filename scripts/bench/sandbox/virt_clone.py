"""Part A's comparison: a template domain defined like a fluid sandbox, full-copied with
virt-clone, started and reached over SSH."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

from bench.memory import qemu_memory_mib
from bench.results import BenchError, Results, log
from bench.sandbox.context import A_CLONE, Bench
from infra.host import domains, ports
from infra.host.libvirt_host import connect, domain_type, remove_domain
from infra.machines import lifecycle, sandboxes
from infra.transport.ssh_ca import authority

CLONE_READY_TIMEOUT_S = 300.0


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
            lifecycle.wait_for_ssh(
                lifecycle.Machine(
                    kind=sandboxes.SANDBOX,
                    name=clone,
                    instance_id=self.instance,
                    domain_name=clone,
                    ssh_port=self.port,
                    host_key=None,
                    console_log=self.console,
                ),
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
