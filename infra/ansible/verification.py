"""Prove a playbook the Molecule way: create → converge → idempotence → verify → destroy.

A fresh sandbox from the same golden image is captured, the playbook applied, the sandbox
captured again; the difference must equal the original ChangeSet (an empty residual), and a
second run must report changed=0. The sandbox is destroyed whatever happens.

No change is left behind silently: a change the playbook leaves out (an exclusion: not
exported, and brought by no exported change) fails the proof, before any sandbox boots, unless
the run accepts it by its key; an accepted exclusion is listed in the report by name.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

from pydantic import BaseModel, Field

from infra.ansible.playbook_runs import PlaybookRun, run_playbook, sandbox_host
from infra.escaping import visible
from infra.machines import sandboxes
from infra.machines.owners import Owner
from infra.settings import FluidSettings, get_settings
from infra.state import capture as captures
from infra.state.base import Change
from infra.state.diff import compare, exclusions, residual
from infra.state.export import load_changeset


class VerificationReport(BaseModel):
    """The result of a replay: residual difference, changed counts per run and timings."""

    image: str
    sandbox_id: str
    passed: bool
    residual: list[Change]
    converge: PlaybookRun | None = None
    idempotence: PlaybookRun | None = None
    timings: dict[str, float]
    error: str | None = None
    # Changes the playbook leaves out: accepted by the run (by key), or not (the proof fails).
    accepted: list[Change] = Field(default_factory=list)
    excluded: list[Change] = Field(default_factory=list)
    # Keys the run accepted that name no exclusion (ignored; a typo, or a change now exported).
    unmatched: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        conv = self.converge.changed_total if self.converge else "?"
        idem = self.idempotence.changed_total if self.idempotence else "?"
        state = "PASSED" if self.passed else "FAILED"
        text = (
            f"{state}: residual {len(self.residual)} change(s); converge changed={conv}, "
            f"idempotence changed={idem}"
        )
        if self.accepted:
            text += f"; {len(self.accepted)} accepted exclusion(s), not reproduced: " + _names(
                self.accepted
            )
        return text


# Keys named in a one-line summary; the report lists every one.
SUMMARY_NAMES = 5


def _names(changes: list[Change]) -> str:
    shown = ", ".join(f"{c.kind} {c.key!r}" for c in changes[:SUMMARY_NAMES])
    more = len(changes) - SUMMARY_NAMES
    return shown + (f" and {more} more (listed in the report)" if more > 0 else "")


def unaccepted_message(excluded: list[Change]) -> str:
    """Why a proof fails on exclusions no one accepted: each one named, and how to accept."""
    # Keys are the guest's: quoted (repr, shell quoting with every control shown), so none
    # can start a line of its own in a log or a terminal.
    listed = "".join(f"\n  - {c.kind} {c.key!r}: {visible(c.exclusion())}" for c in excluded)
    flags = " ".join(f"--accept-exclusion {visible(shlex.quote(c.key))}" for c in excluded)
    return (
        f"{len(excluded)} change(s) of the sandbox are not in the playbook and no replay can "
        f"reproduce them:{listed}\nNo replay was booted: it could only fail. If leaving them "
        f"out is intended (provision them apart), accept each by its key: `fluid verify DIR "
        f"{flags}`, or `fluid run … {flags}` (the agent-task flow's accept_exclusions)."
    )


def verify(
    playbook_dir: Path,
    *,
    image: str | None = None,
    settings: FluidSettings | None = None,
    owner: Owner | None = None,
    progress=None,
    accept_exclusions: Collection[str] = (),
) -> VerificationReport:
    """Replay `playbook_dir` on a fresh sandbox and compare with its changeset.json.

    Fails without booting anything when the change set has exclusions (changes the playbook
    leaves out) whose keys are not in `accept_exclusions`.
    """
    settings = settings or get_settings()
    say = progress or (lambda _m: None)
    expected = load_changeset(playbook_dir)
    accept = set(accept_exclusions)
    excluded = exclusions(expected)
    name, _, version = (image or expected.image or settings.image).partition(":")
    sid = f"verify-{secrets.token_hex(3)}"
    timings: dict[str, float] = {}
    report = VerificationReport(
        image=f"{name}:{version}" if version else name,
        sandbox_id=sid,
        passed=False,
        residual=[],
        timings=timings,
    )
    timings = report.timings  # pydantic copied the dict: time into the report's own
    report.accepted = [c for c in excluded if c.key in accept]
    report.excluded = [c for c in excluded if c.key not in accept]
    report.unmatched = sorted(accept - {c.key for c in excluded})
    if report.excluded:
        report.error = unaccepted_message(report.excluded)
        say(f"not replaying: {len(report.excluded)} exclusion(s) not accepted")
        return report

    def timed(step: str, fn):
        t = time.monotonic()
        say(f"verify: {step}")
        try:
            return fn()
        finally:
            timings[step] = round(time.monotonic() - t, 2)

    try:
        timed(
            "create",
            lambda: sandboxes.create(
                sid, image=name, image_version=version or None, owner=owner, settings=settings
            ),
        )
        before = timed(
            "capture before", lambda: captures.capture(sid, trusted=True, settings=settings)
        )
        with tempfile.TemporaryDirectory(prefix="fluid-verify-") as tmp:
            hosts = [sandbox_host(sid, Path(tmp), settings)]
            report.converge = timed(
                "converge", lambda: run_playbook(playbook_dir, hosts, settings=settings)
            )
            if not report.converge.succeeded:
                report.error = (
                    "the playbook failed on a fresh sandbox:\n"
                    + report.converge.output_tail[-3000:]
                )
                return report
            after = timed("capture after", lambda: captures.capture(sid, settings=settings))
            actual = compare(before, after, settings=settings)
            report.residual = residual(expected, actual, accepted=accept)
            report.idempotence = timed(
                "idempotence", lambda: run_playbook(playbook_dir, hosts, settings=settings)
            )
        report.passed = (
            not report.residual
            and report.idempotence.succeeded
            and report.idempotence.changed_total == 0
        )
        return report
    except Exception as e:  # the report carries the failure; the sandbox still goes
        report.error = f"{type(e).__name__}: {e}"
        return report
    finally:
        timed("destroy", lambda: _destroy_quietly(sid, settings))


def _destroy_quietly(sid: str, settings: FluidSettings) -> None:
    # SandboxNotFound when create failed before making anything: nothing to remove then.
    with contextlib.suppress(Exception):
        sandboxes.destroy(sid, settings)
