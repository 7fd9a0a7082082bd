"""What every part of bench_sandbox shares: the run (Bench), its constants and row names."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.fluid_cli import CLI_TIMEOUT_S
from bench.results import BenchError, Results, log
from infra.host import images
from infra.machines import sandboxes, spares
from infra.settings import FluidSettings
from infra.state.base import ChangeSet

if TYPE_CHECKING:
    from bench.sandbox.virt_clone import VirtCloneBench

try:  # warm starts (issue 6); without them part A's warm rows are reported as not measured
    from infra.machines import warm_slots
except ImportError:  # pragma: no cover - depends on the fluid version
    warm_slots = None  # type: ignore[assignment]
WARM = warm_slots is not None and hasattr(warm_slots, "fill")

CONCURRENT = 8
DEFAULT_WARM_SLOTS = FluidSettings.model_fields["warm_slots"].default

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
        """A line printed under the part's table (and logged now)."""
        self.facts.setdefault(part, []).append(line)
        log(line)


def fluid_says(msg: str) -> None:
    """fluid's progress lines (they say why a start was warm or cold)."""
    log(f"  fluid: {msg}")


def domain_of(name: str, settings: FluidSettings) -> str:
    """The sandbox's libvirt domain as its record says (warm sandboxes are fluid-pool-*)."""
    return sandboxes.get(name, settings).domain_name


def wait_for_spare(res: Results, b: Bench, since: float, row: str = A_REFILL) -> None:
    """Wait until a spare waits; unless `since` is 0, the time from `since` is a `row`."""
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while not spares.list_spares(b.settings, state=spares.WAITING):
        if time.monotonic() > deadline:
            raise BenchError(f"no spare waiting {CLI_TIMEOUT_S:.0f} s after a take")
        time.sleep(0.2)
    if since:
        res.add(row, time.perf_counter() - since, "s")
