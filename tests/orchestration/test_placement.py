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

import pytest

from infra.errors import HostNotFound, HostUnavailable
from infra.records.hosts import Host
from orchestration.placement import HostFacts, choose


def host(hid: str, *, max_sandboxes: int = 8, state: str = "ready", **labels: str) -> Host:
    return Host(
        id=hid,
        work_queue=f"host-{hid}",
        state=state,
        max_sandboxes=max_sandboxes,
        labels=labels,
    )


def online(sandboxes: int = 0, runs: int = 0) -> HostFacts:
    return HostFacts(
        worker_online=True, sandboxes=sandboxes, runs=runs, last_heartbeat=datetime.now(UTC)
    )


def offline(heard_ago_s: float | None = None) -> HostFacts:
    heard = None if heard_ago_s is None else datetime.now(UTC) - timedelta(seconds=heard_ago_s)
    return HostFacts(worker_online=False, sandboxes=0, last_heartbeat=heard)


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
        "quiet": offline(heard_ago_s=300),
        "never": offline(),
        "full": online(4),
        "elsewhere": online(),
    }

    with pytest.raises(HostUnavailable) as e:
        choose(hs, facts, labels={"zone": "a"})

    lines = dict(line.strip().split(": ", 1) for line in str(e.value).splitlines()[1:])
    assert lines["drained"].startswith("draining")
    assert lines["dead"].startswith("down")
    assert "worker offline" in lines["quiet"] and "last heartbeat 300 s ago" in lines["quiet"]
    assert "worker offline" in lines["never"] and "never heard from" in lines["never"]
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


def test_runs_placed_but_not_started_count_against_their_host():
    # a has more empty room, but two runs already wait to start there (two slots each).
    facts = {"a": online(sandboxes=0, runs=2), "b": online(sandboxes=2)}

    assert {choose([host("a"), host("b")], facts, rng=random.Random(s)).id for s in range(20)} == {
        "b"
    }


def test_a_host_without_the_published_image_is_skipped():
    facts = {"a": online(), "b": online()}
    facts["a"].has_image = False

    assert choose([host("a"), host("b")], facts).id == "b"
    with pytest.raises(
        HostUnavailable, match="host a cannot take the run: does not hold the image"
    ):
        choose([host("a"), host("b")], facts, pinned="a")
