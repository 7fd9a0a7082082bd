"""Placement: a run goes to a ready host with an online worker, room and the labels asked
for, preferring the most free capacity (at random among near-equals); a pinned host is used
or refused with its reason, and when no host fits the error names each host and why.

`choose` is pure; `place` is shown with the workers' queue polls stubbed (no Prefect server).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.errors import HostNotFound, HostUnavailable
from infra.records import hosts
from infra.records.hosts import Host
from infra.settings import get_settings
from orchestration import placement
from orchestration.placement import HostFacts, choose


def host(hid: str, *, max_sandboxes: int = 8, state: str = "ready", **labels: str) -> Host:
    return Host(
        id=hid,
        work_queue=f"host-{hid}",
        state=state,
        max_sandboxes=max_sandboxes,
        labels=labels,
    )


def online(sandboxes: int = 0) -> HostFacts:
    return HostFacts(worker_online=True, sandboxes=sandboxes, last_polled=datetime.now(UTC))


def offline(polled_ago_s: float | None = None) -> HostFacts:
    polled = None if polled_ago_s is None else datetime.now(UTC) - timedelta(seconds=polled_ago_s)
    return HostFacts(worker_online=False, sandboxes=0, last_polled=polled)


def test_the_host_with_most_free_capacity_is_chosen():
    hs = [host("a"), host("b"), host("c", max_sandboxes=16)]
    facts = {"a": online(2), "b": online(7), "c": online(4)}

    assert choose(hs, facts, rng=random.Random(1)).id == "c"


def test_hosts_within_one_sandbox_of_the_best_share_the_runs_and_the_rest_get_none():
    hs = [host("a"), host("b"), host("c")]
    facts = {"a": online(1), "b": online(2), "c": online(5)}  # free: 7, 6, 3

    picks = Counter(choose(hs, facts, rng=random.Random(seed)).id for seed in range(200))

    assert set(picks) == {"a", "b"}
    assert min(picks.values()) > 50


def test_each_filtered_host_is_named_with_its_reason_when_none_fits():
    hs = [
        host("drained", state="draining"),
        host("dead", state="down"),
        host("quiet"),
        host("never"),
        host("full", max_sandboxes=4),
        host("elsewhere", zone="b"),
    ]
    facts = {
        "drained": online(),
        "dead": online(),
        "quiet": offline(polled_ago_s=300),
        "never": offline(),
        "full": online(4),
        "elsewhere": online(),
    }

    with pytest.raises(HostUnavailable) as e:
        choose(hs, facts, labels={"zone": "a"})

    lines = dict(line.strip().split(": ", 1) for line in str(e.value).splitlines()[1:])
    assert lines["drained"].startswith("draining")
    assert lines["dead"].startswith("down")
    assert "worker offline" in lines["quiet"] and "last polled 300 s ago" in lines["quiet"]
    assert "worker offline" in lines["never"] and "never polled" in lines["never"]
    assert "fluid worker start --host never" in lines["never"]
    assert lines["full"] == "full (4 of 4 sandboxes in use)"
    assert lines["elsewhere"] == "labels do not match (wanted zone=a)"


def test_a_host_without_facts_counts_as_offline():
    with pytest.raises(HostUnavailable, match="a: worker offline"):
        choose([host("a")], {})


def test_only_hosts_with_every_label_asked_for_are_chosen():
    hs = [host("a", zone="a"), host("b", zone="b", disk="ssd"), host("c", zone="b")]
    facts = {h.id: online() for h in hs}

    picks = {
        choose(hs, facts, labels={"zone": "b", "disk": "ssd"}, rng=random.Random(s)).id
        for s in range(50)
    }

    assert picks == {"b"}


def test_a_pinned_host_is_used_even_when_another_has_more_room():
    hs = [host("a"), host("b")]
    facts = {"a": online(0), "b": online(6)}

    assert choose(hs, facts, pinned="b").id == "b"


@pytest.mark.parametrize(
    ("state", "facts", "reason"),
    [
        ("draining", online(), "draining"),
        ("ready", offline(), "worker offline"),
        ("ready", online(8), "full (8 of 8"),
    ],
)
def test_a_pinned_host_that_cannot_take_the_run_is_refused_with_its_reason(state, facts, reason):
    hs = [host("a"), host("b", state=state)]

    with pytest.raises(HostUnavailable, match=re.escape(f"host b cannot take the run: {reason}")):
        choose(hs, {"a": online(), "b": facts}, pinned="b")


def test_a_pinned_host_that_is_not_registered_is_not_found():
    with pytest.raises(HostNotFound, match="no host 'zz' is registered"):
        choose([host("a")], {"a": online()}, pinned="zz")


def test_no_registered_host_says_to_start_a_worker():
    with pytest.raises(HostUnavailable, match="fluid worker start"):
        choose([], {})


@pytest.fixture
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLUID_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLUID_DATABASE_URL", f"sqlite:///{tmp_path / 'fluid.db'}")
    monkeypatch.setenv("FLUID_HOST_ID", "solo")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def polled(monkeypatch: pytest.MonkeyPatch, ago_s: dict[str, float]) -> None:
    """Stub what Prefect says: when each queue was last polled."""
    now = datetime.now(UTC)
    polls = {q: now - timedelta(seconds=s) for q, s in ago_s.items()}
    monkeypatch.setattr(placement, "queue_polls", lambda settings=None: polls)


def test_one_host_alone_needs_no_set_up_it_registers_itself_and_is_chosen(own_store, monkeypatch):
    polled(monkeypatch, {"host-solo": 2})

    assert placement.place().id == "solo"
    assert [h.id for h in hosts.list_hosts()] == ["solo"]


def test_a_worker_silent_for_over_a_minute_is_offline_and_its_host_skipped(own_store, monkeypatch):
    hosts.add("a")
    hosts.add("b")
    polled(monkeypatch, {"host-a": 90, "host-b": 5})

    assert placement.place().id == "b"
    with pytest.raises(HostUnavailable, match="host a cannot take the run: worker offline"):
        placement.place(pinned="a")
