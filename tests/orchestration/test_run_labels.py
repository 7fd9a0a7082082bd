"""Names and tags of agent-task flow runs: what the runs list shows."""

from orchestration.run_labels import TASK_CHARS, run_name, run_tags


def test_a_run_is_named_from_its_target_and_task() -> None:
    assert run_name("install nginx", "web") == "web: install nginx"


def test_control_characters_in_the_task_never_reach_the_name() -> None:
    name = run_name("install\x1b[31m nginx\r\n\tnow\u202e\x00", "web")
    assert name == "web: install[31m nginx now"
    assert all(c.isprintable() for c in name)


def test_a_long_task_is_cut_to_a_length_a_list_shows_whole() -> None:
    name = run_name("install " * 40, "web")
    task = name.removeprefix("web: ")
    assert len(task) <= TASK_CHARS
    assert task.endswith("…")
    assert task.startswith("install install")


def test_runs_are_tagged_with_target_agent_kind_and_host() -> None:
    assert run_tags("web", {"kind": "scripted", "steps": []}, "h1") == [
        "production:web",
        "agent:scripted",
        "host:h1",
    ]
    # A bare agent name is a saved LLM block; an unplaced run has no host tag.
    assert run_tags("db", "local", None) == ["production:db", "agent:llm"]
