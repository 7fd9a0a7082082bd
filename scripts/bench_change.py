#!/usr/bin/env python3
"""Benchmark fluid's change pipeline (capture, diff, export, replay) and print a markdown table.

Run from the repository root, as root (libvirt's system URI, nftables), when no other VM work
is using the CPU:

    .venv/bin/python scripts/bench_change.py [--runs N]

It boots one sandbox from the real golden image (a fresh FLUID_HOME in a temporary directory:
own database, SSH CA and captures; the configured storage dir, so disks, the blob store and the
hash index are the real ones), changes it the way an agent would, and replays the exported
playbook once with ``verify()``, which boots a second sandbox after the first one is gone. At
most one VM runs at a time. Every sandbox is destroyed again, also on errors, Ctrl-C, SIGTERM
and SIGHUP, and the temporary directory is removed.

Rows (wall-clock time.perf_counter; n = number of samples; --runs N, default 3, samples for
the repeatable rows):

- create -> SSH-ready: ``sandboxes.create()`` of the benchmark sandbox (context).
- first capture: the first ``capture.capture()`` of the freshly booted sandbox. The guest
  hashes every file the image's hash index does not cover; the label says whether the index
  (STORAGE/cache/hash-index/<image>-<version>.json.gz) existed before, i.e. whether this was
  a full hash or an indexed one.
- capture, unchanged sandbox: N more captures of the same, still unchanged sandbox (index hot).
- change (agent work): one SSH command in the sandbox: ``apt-get update && apt-get install -y
  nginx``, a custom /etc/nginx/sites-available/bench and ``useradd -m bench``; for context,
  it is mostly apt under TCG plus the mirror's speed.
- capture, changed sandbox: one capture after the change (the new files are hashed and sent).
- diff (compare): ``diff.compare(before, after)`` of the last unchanged capture and the changed
  one, N times; host CPU only (plus reading blobs for text diffs).
- export to temp dir: ``export.export(changeset, new dir)``, N times, each into a new directory.
- capture, small change / 1 GiB file (child process): after the exports, a one-line file is
  written and the sandbox captured, then a 1 GiB random file (``head -c 1G /dev/urandom``) is
  made and the sandbox captured again; each capture runs in a fresh Python process.
  "capture peak RSS" is that process's VmHWM, reset (``/proc/self/clear_refs``) once fluid's
  modules are loaded and an SSH connection made, so it is the capture's own peak; "capture RSS
  growth" is that peak minus the process's VmRSS just before the capture. The large file's
  content streams into the blob store, so both stay near the small change's.
- destroy: ``sandboxes.destroy()`` of the benchmark sandbox.
- replay: <step>: ``verification.verify()`` run once on the first export, per step: create,
  capture before, converge, capture after, idempotence, destroy. Taken from the report's
  ``timings`` when it has any; otherwise (``VerificationReport`` validates, i.e. copies, the
  dict verify() fills in afterwards, so ``report.timings`` stays empty) from the times between
  verify()'s "verify: <step>" progress messages, the last step ending when verify() returns.
  The line above the table says which source was used.
- replay total: wall time of the whole ``verify()`` call.

The header shows nproc, the load average at the start, the domain type, the guest size, the
number of files in a capture and the number of changes. The exit status is non-zero when the
replay did not pass (its summary and residual are printed), when the change set lacks one of
the expected changes, or when any step or the cleanup failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure_capture import measured_capture

from bench.cleanup import destroy_quietly, leftovers
from bench.host import guest_facts, is_root, load_average, report_errors
from bench.results import (
    BenchError,
    Results,
    failure,
    interrupt_on_termination,
    log,
    signals_ignored,
)
from infra.ansible.verification import VerificationReport, verify
from infra.host import images
from infra.machines import sandboxes, warm_slots
from infra.settings import FluidSettings
from infra.state import capture as captures
from infra.state import playbook_yaml
from infra.state.base import Capture, ChangeSet, kinds
from infra.state.diff import compare, terminal
from infra.state.export import ROLE, export

SITE = "server {\n    listen 8081;\n    root /var/www/html;\n    server_name bench.local;\n}\n"
CHANGE = f"""set -e
apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx
cat > /etc/nginx/sites-available/bench <<'EOF_BENCH'
{SITE}EOF_BENCH
useradd -m bench
"""
# (kind, key, action) that the change set must contain.
EXPECTED = (
    ("packages", "nginx", "added"),
    ("users", "user bench", "added"),
    ("files", "/etc/nginx/sites-available/bench", "added"),
)
CHANGE_TIMEOUT_S = 1800.0
BIG_FILE = "/opt/big.bin"
MAKE_BIG = f"head -c 1G /dev/urandom > {BIG_FILE}"
SMALL_CHANGE = "echo 'a small change' > /etc/fluid-bench-small.conf"
MIB = 1 << 20
STEP_PREFIX = "verify: "  # verify() announces each step with this


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Facts:
    """What the header reports besides the host."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _files(cap: Capture) -> int:
    return len(cap.state("files").entries)


def _describe(cs: ChangeSet) -> str:
    per_kind = ", ".join(f"{len(cs.of(k))} {k}" for k in kinds() if cs.of(k))
    exported = sum(1 for c in cs.changes if c.exported)
    return f"{len(cs.changes)} changes ({exported} exported): {per_kind or 'none'}"


def _missing_expected(cs: ChangeSet) -> list[str]:
    got = {(c.kind, c.key, c.action) for c in cs.changes}
    return [f"{k} {key} {action}" for k, key, action in EXPECTED if (k, key, action) not in got]


def bench(
    res: Results,
    facts: Facts,
    name: str,
    runs: int,
    root: Path,
    settings: FluidSettings,
    golden: images.ImageManifest,
) -> VerificationReport:
    """Every step on one sandbox, then the replay; the caller cleans up on failure."""
    res.timed(
        "create -> SSH-ready",
        "s",
        lambda: sandboxes.create(name, image=golden.name, ttl_minutes=120, settings=settings),
    )

    index = captures.index_path(golden.name, golden.version, settings)
    label = "first capture (hash index present)" if index.exists() else "first capture (no index)"
    log(f"hash index {index}: {'present' if index.exists() else 'absent'} before first capture")
    before = res.timed(label, "s", lambda: captures.capture(name, settings=settings))
    first_files = _files(before)
    for i in range(runs):
        log(f"capture of the unchanged sandbox {i + 1}/{runs}")
        before = res.timed(
            "capture, unchanged sandbox", "s", lambda: captures.capture(name, settings=settings)
        )

    log("change: apt-get update, install nginx, a site file, useradd (minutes under TCG)")
    r = res.timed(
        "change (agent work: apt + file + useradd)",
        "s",
        lambda: sandboxes.run(
            name, CHANGE, timeout=CHANGE_TIMEOUT_S, actor="bench", settings=settings
        ),
    )
    if r.exit_status != 0:
        raise BenchError(
            f"the change exited {r.exit_status} in sandbox {name}:\n"
            f"{r.stdout_text[-1500:]}\n{r.stderr_text[-1500:]}"
        )

    after = res.timed(
        "capture, changed sandbox", "s", lambda: captures.capture(name, settings=settings)
    )
    facts.lines.append(
        f"capture: {first_files} files at first, {_files(before)} before the change, "
        f"{_files(after)} after; hash index {index} "
        f"({index.stat().st_size // 1024 if index.exists() else 0} KiB now)"
    )

    changesets = [
        res.timed("diff (compare)", "ms", lambda: compare(before, after, settings=settings))
        for _ in range(runs)
    ]
    cs = changesets[-1]
    facts.lines.append(f"change set: {_describe(cs)}")
    log(f"change set:\n{terminal(cs)}")
    if missing := _missing_expected(cs):
        facts.problems.append(f"the change set lacks {', '.join(missing)}")

    exports = root / "exports"
    exports.mkdir()
    dirs = [exports / f"run-{i}" for i in range(1, runs + 1)]
    for d in dirs:
        res.timed("export to temp dir", "ms", lambda d=d: export(cs, d, settings))
    tasks = playbook_yaml.load((dirs[0] / "roles" / ROLE / "tasks" / "main.yml").read_text())
    n_files = sum(1 for p in dirs[0].rglob("*") if p.is_file())
    facts.lines.append(f"export: {len(tasks)} tasks, {n_files} files in the playbook directory")

    large_file_rows(res, facts, name, settings)

    # One VM at a time: the replay's sandbox boots after this one is gone.
    res.timed("destroy", "ms", lambda: sandboxes.destroy(name, settings))

    log("replay: verify() on a fresh sandbox (create, capture, converge, capture, idempotence)")
    marks: list[tuple[str, float]] = []

    def progress(msg: str) -> None:
        log(f"  {msg}")
        if msg.startswith(STEP_PREFIX):
            marks.append((msg.removeprefix(STEP_PREFIX), time.perf_counter()))

    start = time.perf_counter()
    report = verify(dirs[0], settings=settings, progress=progress)
    end = time.perf_counter()
    total = end - start
    if report.timings:
        steps, source = dict(report.timings), "the report's timings"
    else:
        steps, source = step_times(marks, end), "verify()'s progress messages"
    for step, seconds in steps.items():
        res.add(f"replay: {step}", seconds, "s")
    res.add("replay total", total, "s")
    facts.lines.append(f"replay step times from {source}")
    log(f"replay: {report.summary()} in {total:.1f} s")
    return report


def _measured(name: str, path: str, settings: FluidSettings) -> dict:
    """One capture in a child process (scripts/measure_capture.py): its own time and memory."""
    try:
        return measured_capture(name, settings, path=path, timeout=CHANGE_TIMEOUT_S)
    except RuntimeError as e:
        raise BenchError(str(e)) from e


def large_file_rows(res: Results, facts: Facts, name: str, settings: FluidSettings) -> None:
    """A small change's capture, then a 1 GiB file's, each in a child process: time, peak RSS
    and its growth, so a flat memory use shows beside the baseline."""
    log("small change, captured in a child process (baseline for the large file)")
    sandboxes.run(name, SMALL_CHANGE, timeout=60, actor="bench", settings=settings)
    small = _measured(name, "/etc/fluid-bench-small.conf", settings)
    log("a 1 GiB random file in the sandbox, captured in a child process")
    r = res.timed(
        "make a 1 GiB file in the guest (context)",
        "s",
        lambda: sandboxes.run(name, MAKE_BIG, timeout=CHANGE_TIMEOUT_S, settings=settings),
    )
    if r.exit_status != 0:
        raise BenchError(f"making {BIG_FILE} failed: {r.stderr_text[-1500:]}")
    big = _measured(name, BIG_FILE, settings)
    if not big["stored"]:
        facts.problems.append(f"the capture did not store the content of {BIG_FILE}")
    for label, got in (("small change", small), ("1 GiB file", big)):
        res.add(f"capture, {label} (child process)", got["seconds"], "s")
        res.add(f"capture peak RSS, {label}", got["peak"] / MIB, "MiB")
        res.add(f"capture RSS growth, {label}", got["growth"] / MIB, "MiB")
    facts.lines.append(
        "large file: peak RSS is the capturing child's VmHWM, reset once its modules were loaded "
        "and an SSH connection made; growth is that peak minus its VmRSS just before the capture"
    )


def step_times(marks: list[tuple[str, float]], end: float) -> dict[str, float]:
    """Seconds per step from (step, start time) marks; the last step lasts until `end`."""
    ends = [t for _, t in marks[1:]] + [end]
    out: dict[str, float] = {}
    for (step, t), until in zip(marks, ends, strict=True):
        out[step] = out.get(step, 0.0) + until - t
    return out


# --- cleanup --------------------------------------------------------------------------------


def my_sandboxes(settings: FluidSettings) -> list[str]:
    """Every sandbox recorded in the benchmark's own database (nobody else's)."""
    try:
        return [s.id for s in sandboxes.list_sandboxes(settings).sandboxes]
    except Exception as e:
        log(f"cleanup: cannot list the benchmark's sandboxes: {e}")
        return []


# --- main -----------------------------------------------------------------------------------


def host_line(settings: FluidSettings, golden: images.ImageManifest) -> str:
    """The host, its load, the guest's size and the image."""
    load = load_average()
    return f"host: nproc={os.cpu_count()} load={load} {guest_facts(settings, golden)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=3, help="samples for the repeatable rows (default 3)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not is_root("libvirt's system URI, nftables"):
        return 2

    interrupt_on_termination()
    root = Path(tempfile.mkdtemp(prefix="fluid-bench-cap-"))
    # Own database, CA and captures; the configured storage dir so the real golden image is used.
    # No spares: they would keep running after the benchmark (its sandboxes are named).
    settings = FluidSettings(
        home=root / "home", database_url=None, ca_private_key=None, spare_sandboxes=0
    )
    tag = "".join(c for c in root.name.removeprefix("fluid-bench-cap-").lower() if c.isalnum())
    name = f"bcap-{tag[:8] or 'x'}"
    res = Results()
    facts = Facts()
    report: VerificationReport | None = None
    error: str | None = None
    code = 0
    ids = [name]
    try:
        golden = images.resolve(settings.image, settings=settings)
        print(host_line(settings, golden), flush=True)
        report = bench(res, facts, name, args.runs, root, settings, golden)
    except (KeyboardInterrupt, Exception) as e:  # any failure ends the run, with its message
        error, code = failure(e)
    finally:
        with signals_ignored():
            ids += [i for i in my_sandboxes(settings) if i not in ids]
            if report is not None and report.sandbox_id not in ids:
                ids.append(report.sandbox_id)
            problems = [p for i in ids if (p := destroy_quietly(i, settings))]
            try:
                problems += [f"leaked {x}" for x in leftovers(ids, settings)]
            except Exception as e:
                problems.append(f"cannot check for leftovers: {e}")
            try:  # its warm slots live in the shared storage dir, under its database's id
                warm_slots.clear(settings)
            except Exception as e:
                problems.append(f"could not clear the warm slots: {e}")
            shutil.rmtree(root, ignore_errors=True)
            if root.exists():
                problems.append(f"could not remove {root}")

    for line in facts.lines:
        print(line)
    if report is not None:
        residual = len(report.residual)
        print(f"replay: {'passed' if report.passed else 'FAILED'}, residual {residual} change(s)")
    if res.rows:
        print(res.table(), flush=True)
    if report is not None and not report.passed:
        print(f"error: the replay did not pass: {report.summary()}", file=sys.stderr)
        if report.residual:
            print(terminal(ChangeSet(changes=report.residual)), file=sys.stderr)
        code = code or 1
    for p in facts.problems:
        print(f"error: {p}", file=sys.stderr)
        code = code or 1
    return report_errors(error, problems, code)


if __name__ == "__main__":
    sys.exit(main())
