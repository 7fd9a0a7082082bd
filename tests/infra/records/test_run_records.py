"""The run record an agent-task flow keeps through RunRecorder (infra/records/runs.py): how a
run ended is recorded once, whichever way it ends; a suspension ends nothing. No VM, no
Prefect: the store only."""

from __future__ import annotations

import pytest

from infra.records import runs
from infra.records.runs import RunRecorder
from infra.settings import FluidSettings


class Suspended(BaseException):
    """Stands in for Prefect's Pause, which a suspended run raises."""


@pytest.fixture
def settings(tmp_path) -> FluidSettings:
    return FluidSettings(home=tmp_path)


def test_a_run_is_recorded_as_it_goes_and_its_end_once(settings):
    record = RunRecorder.start("run-1", "install nginx", "web", settings)
    record.update(sandbox_id="box", status="working", attempts=1)
    with record.failing():
        record.end("applied", "approved by ann")
    record.end("failed", "a later end changes nothing")
    record.update(status="working")
    rec = runs.get("run-1", settings)
    assert rec is not None
    assert (rec.status, rec.message, rec.sandbox_id, rec.attempts) == (
        "applied",
        "approved by ann",
        "box",
        1,
    )


def test_an_exception_leaving_the_work_is_the_runs_failure(settings):
    record = RunRecorder.start("run-2", "task", "web", settings)
    with pytest.raises(ValueError, match="boom"), record.failing(passes=(Suspended,)):
        raise ValueError("boom")
    rec = runs.get("run-2", settings)
    assert rec is not None and (rec.status, rec.message) == ("failed", "ValueError: boom")


def test_a_suspension_ends_nothing(settings):
    record = RunRecorder.start("run-3", "task", "web", settings)
    record.update(status="awaiting-approval")
    with pytest.raises(Suspended), record.failing(passes=(Suspended,)):
        raise Suspended()
    rec = runs.get("run-3", settings)
    assert rec is not None and rec.status == "awaiting-approval"


def test_decisions_go_through_the_recorder_to_the_store(settings):
    record = RunRecorder.start("run-4", "task", "web", settings)
    record.decide(1, "rejected", approver="ann", comment="use port 8080", digest="d" * 64)
    assert [
        (d.attempt, d.outcome, d.approver, d.comment) for d in runs.decisions("run-4", settings)
    ] == [(1, "rejected", "ann", "use port 8080")]
    assert [r.flow_run_id for r in runs.open_runs(settings)] == ["run-4"]
