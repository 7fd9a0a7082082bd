"""Prove a playbook the Molecule way: create → converge → idempotence → verify → destroy.

A fresh sandbox from the same golden image is captured, the playbook applied, the sandbox
captured again; the difference must equal the original ChangeSet (an empty residual), and a
second run must report changed=0. The sandbox is destroyed whatever happens.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from infra import sandboxes
from infra.owners import Owner
from infra.playbook_runs import PlaybookRun, run_playbook, sandbox_host
from infra.settings import FluidSettings, get_settings
from infra.state import capture as captures
from infra.state.base import Change
from infra.state.diff import compare, residual
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

    def summary(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        conv = self.converge.changed_total if self.converge else "?"
        idem = self.idempotence.changed_total if self.idempotence else "?"
        state = "PASSED" if self.passed else "FAILED"
        return (
            f"{state}: residual {len(self.residual)} change(s); converge changed={conv}, "
            f"idempotence changed={idem}"
        )


def verify(
    playbook_dir: Path,
    *,
    image: str | None = None,
    settings: FluidSettings | None = None,
    owner: Owner | None = None,
    progress=None,
) -> VerificationReport:
    """Replay `playbook_dir` on a fresh sandbox and compare with its changeset.json."""
    settings = settings or get_settings()
    say = progress or (lambda _m: None)
    expected = load_changeset(playbook_dir)
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
            report.residual = residual(expected, actual)
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
