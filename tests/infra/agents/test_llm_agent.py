"""The LLM agent against a local chat-completions server playing scripted model turns, with the
real tools on a real sandbox: what it sends, how it retries, corrects, bounds and stops."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from blocks.llm import LLMBlock
from infra.agents.base import AgentContext, AgentReport, Progress
from infra.agents.errors import AgentFailed
from infra.agents.llm import SYSTEM_PROMPT, LLMAgent, LLMEndpoint
from infra.agents.tools import Toolbox
from infra.machines import sandboxes
from infra.settings import FluidSettings
from tests.chat_server import (
    Assistant,
    ChatServer,
    HTTPError,
    Request,
    chat_server_fixture,  # noqa: F401 - provides the chat_server fixture
)
from tests.conftest import free_port
from tests.infra.agents.test_agent_tools import TOOL_NAMES as SPECIFIED_TOOLS

TOOL_NAMES = set(SPECIFIED_TOOLS)
DIR = "/root/llm-test"
# The `attempt` fixture: one attempt of the agent, given `say` and endpoint limits.
Attempt = Callable[..., AgentReport]


def finish(summary: str = "done", call_id: str = "call-finish") -> Assistant:
    return Assistant(tool_calls=[("finish", {"summary": summary}, call_id)])


def run(command: str, call_id: str | None = None) -> tuple:
    args = json.dumps({"command": command})
    return ("run_command", args) if call_id is None else ("run_command", args, call_id)


def endpoint(server: ChatServer, **limits: object) -> LLMEndpoint:
    """An endpoint on the local server with quick retries."""
    return LLMEndpoint(base_url=server.url, model="test-model", retry_backoff_s=0.01, **limits)


def sh(box: sandboxes.Sandbox, settings: FluidSettings, command: str) -> str:
    r = sandboxes.run(box.id, command, timeout=60, settings=settings)
    assert r.exit_status == 0, r.stderr_text
    return r.stdout_text


def answered_once(request: Request) -> None:
    """Every tool_call_id of every assistant message has exactly one tool message."""
    asked = [
        tc["id"]
        for m in request.messages
        if m["role"] == "assistant"
        for tc in m.get("tool_calls") or []
    ]
    answered = [m["tool_call_id"] for m in request.tool_messages()]
    assert sorted(asked) == sorted(answered)
    assert len(set(asked)) == len(asked)


@pytest.fixture
def tools(agent_box: sandboxes.Sandbox, settings: FluidSettings) -> Iterator[Toolbox]:
    lines: list[str] = []
    with Toolbox(agent_box.id, settings=settings, actor="agent:llm-test", say=lines.append) as t:
        yield t


@pytest.fixture
def ctx(agent_box: sandboxes.Sandbox) -> AgentContext:
    return AgentContext(task="make the marker file", sandbox_id=agent_box.id)


@pytest.fixture
def attempt(chat_server: ChatServer, tools: Toolbox, ctx: AgentContext) -> Attempt:
    """One attempt of the LLM agent at `ctx` against the chat server: `limits` go to its
    endpoint, its log lines to `say`."""

    def attempt(say: Progress = lambda _: None, **limits: object) -> AgentReport:
        return LLMAgent(endpoint(chat_server, **limits)).work(ctx, tools, say=say)

    return attempt


# -- the endpoint and its block (no VM) --------------------------------------------------------


def test_endpoint_never_shows_its_key() -> None:
    ep = LLMEndpoint(base_url="http://127.0.0.1:9/v1/", model="m", api_key="sk-very-secret")
    for text in (repr(ep), str(ep), ep.model_dump_json()):
        assert "sk-very-secret" not in text
    assert ep.url == "http://127.0.0.1:9/v1/chat/completions"
    assert LLMEndpoint(base_url="http://h/v1", model="m", api_key="").api_key is None
    with pytest.raises(ValueError, match="http"):
        LLMEndpoint(base_url="127.0.0.1:8000/v1", model="m")


def test_block_gives_the_endpoint_and_keeps_the_key_secret() -> None:
    block = LLMBlock(base_url="http://127.0.0.1:8000/v1", model="qwen", api_key="sk-b", max_turns=7)
    ep = block.endpoint()
    assert (ep.base_url, ep.model, ep.max_turns) == ("http://127.0.0.1:8000/v1", "qwen", 7)
    assert ep.api_key is not None and ep.api_key.get_secret_value() == "sk-b"
    assert ep.max_total_tokens == LLMEndpoint.model_fields["max_total_tokens"].default
    assert "api_key" in LLMBlock._to_block_schema().fields["secret_fields"]
    assert "sk-b" not in repr(block)
    assert LLMBlock(base_url="http://h/v1", model="m").endpoint().api_key is None


# -- the agent ---------------------------------------------------------------------------------


@pytest.mark.vm
def test_runs_a_command_then_finishes(
    chat_server: ChatServer,
    attempt: Attempt,
    agent_box: sandboxes.Sandbox,
    settings: FluidSettings,
) -> None:
    chat_server.turns += [
        Assistant(
            content="I will create the marker.",
            tool_calls=[run(f"mkdir -p {DIR} && echo made-by-llm > {DIR}/marker")],
        ),
        finish("created the marker"),
    ]
    said: list[str] = []
    report = attempt(say=said.append)

    assert report.summary == "created the marker" and report.actions == 1
    assert sh(agent_box, settings, f"cat {DIR}/marker") == "made-by-llm\n"
    first, second = chat_server.requests
    assert first.path == "/v1/chat/completions"
    assert "authorization" not in first.headers
    assert first.body["model"] == "test-model" and first.body["tool_choice"] == "auto"
    assert set(first.tool_names()) == TOOL_NAMES and len(first.tool_names()) == 7
    assert all(t["type"] == "function" for t in first.body["tools"])
    assert first.messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Task: make the marker file"},
    ]
    assert "Debian 12" in SYSTEM_PROMPT and "Ansible" in SYSTEM_PROMPT
    # The second request carries the assistant's call and its result under the same id.
    call_id = second.messages[2]["tool_calls"][0]["id"]
    (result,) = second.tool_messages()
    assert result["tool_call_id"] == call_id and result["content"].startswith("exit status 0")
    # One log line per model turn, with its text and token usage.
    turn_lines = [s for s in said if s.startswith("model turn")]
    assert len(turn_lines) == 2
    assert "run_command" in turn_lines[0] and "I will create the marker." in turn_lines[0]
    assert "tokens" in turn_lines[0]


@pytest.mark.vm
def test_a_key_is_sent_as_bearer_token(chat_server: ChatServer, attempt: Attempt) -> None:
    chat_server.turns.append(finish())
    attempt(api_key="k")
    assert chat_server.requests[0].headers["authorization"] == "Bearer k"


@pytest.mark.vm
def test_429_and_5xx_are_retried_with_backoff_and_retry_after(
    chat_server: ChatServer,
    attempt: Attempt,
) -> None:
    arrivals: list[float] = []

    def stamp(reply: Assistant | HTTPError):
        def turn(_request: Request) -> Assistant | HTTPError:
            arrivals.append(time.monotonic())
            return reply

        return turn

    chat_server.turns += [
        stamp(HTTPError(429, {"error": {"message": "slow down"}}, retry_after="1")),
        # A long Retry-After is capped at retry_max_wait_s.
        stamp(HTTPError(503, "overloaded", retry_after="3600")),
        stamp(HTTPError(500, {"error": {"message": "boom"}})),
        stamp(finish("after retries")),
    ]
    said: list[str] = []
    report = attempt(say=said.append, retry_max_wait_s=1.5)

    assert report.summary == "after retries"
    bodies = [r.body for r in chat_server.requests]
    assert len(bodies) == 4 and all(b == bodies[0] for b in bodies)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert gaps[0] >= 0.95  # Retry-After: 1
    assert 1.45 <= gaps[1] < 3  # Retry-After: 3600, capped
    assert gaps[2] < 1  # backoff base 0.01 s
    retries = [s for s in said if "retry" in s]
    assert len(retries) == 3 and "slow down" in retries[0]


@pytest.mark.vm
def test_other_4xx_fail_at_once_with_the_servers_message(
    chat_server: ChatServer,
    attempt: Attempt,
) -> None:
    chat_server.turns.append(HTTPError(404, {"error": {"message": "model 'nope' not found"}}))
    with pytest.raises(AgentFailed, match=r"404: model 'nope' not found.*check base_url"):
        attempt()
    assert len(chat_server.requests) == 1


@pytest.mark.vm
def test_retries_run_out(chat_server: ChatServer, attempt: Attempt) -> None:
    chat_server.turns += [HTTPError(502, "bad gateway")] * 3
    with pytest.raises(AgentFailed, match=r"502: bad gateway \(gave up after 3 tries"):
        attempt(max_retries=2)
    assert len(chat_server.requests) == 3


@pytest.mark.vm
def test_an_unreachable_server_is_retried_then_fails(tools: Toolbox, ctx: AgentContext) -> None:
    ep = LLMEndpoint(
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        model="m",
        max_retries=1,
        retry_backoff_s=0.01,
    )
    with pytest.raises(AgentFailed, match=r"cannot reach .*gave up after 2 tries"):
        LLMAgent(ep).work(ctx, tools, say=lambda _: None)


@pytest.mark.vm
def test_malformed_calls_get_errors_the_model_can_correct(
    chat_server: ChatServer,
    attempt: Attempt,
    agent_box: sandboxes.Sandbox,
    settings: FluidSettings,
) -> None:
    def correct(request: Request) -> Assistant:
        # React to what the agent sent: fix the call whose arguments were not JSON.
        errors = {m["tool_call_id"]: m["content"] for m in request.tool_messages()}
        assert "not valid JSON" in errors["bad-json"]
        return Assistant(tool_calls=[run(f"echo fixed >> {DIR}/malformed", "fixed")])

    chat_server.turns += [
        Assistant(
            tool_calls=[
                ("run_command", '{"command": "echo never', "bad-json"),
                ("no_such_tool", "{}", "bad-name"),
                ("run_command", {"command": f"mkdir -p {DIR}; echo first > {DIR}/malformed"}, None),
            ]
        ),
        correct,
        finish(),
    ]
    attempt()

    second = chat_server.requests[1]
    answered_once(second)
    ids = [tc["id"] for tc in second.messages[2]["tool_calls"]]
    assert ids[:2] == ["bad-json", "bad-name"] and ids[2]  # the missing id was made up
    results = {m["tool_call_id"]: m["content"] for m in second.tool_messages()}
    assert "there is no tool 'no_such_tool'" in results["bad-name"]
    assert "run_command" in results["bad-name"]  # it names the tools that exist
    assert results[ids[2]].startswith("exit status 0")
    assert sh(agent_box, settings, f"cat {DIR}/malformed") == "first\nfixed\n"


@pytest.mark.vm
def test_finish_ends_the_attempt_after_the_other_calls_without_another_request(
    chat_server: ChatServer,
    attempt: Attempt,
    agent_box: sandboxes.Sandbox,
    settings: FluidSettings,
) -> None:
    chat_server.turns.append(
        Assistant(
            tool_calls=[
                ("write_file", {"path": f"{DIR}/before-finish", "content": "w\n"}),
                ("finish", {"summary": "all in one message"}),
                run(f"touch {DIR}/after-finish"),
            ]
        )
    )
    report = attempt()
    assert report.summary == "all in one message" and report.actions == 2
    assert len(chat_server.requests) == 1
    assert sh(agent_box, settings, f"cat {DIR}/before-finish; ls {DIR}/after-finish") == (
        f"w\n{DIR}/after-finish\n"
    )


@pytest.mark.vm
def test_a_reply_without_tool_calls_is_nudged_and_turns_run_out(
    chat_server: ChatServer,
    attempt: Attempt,
) -> None:
    chat_server.turns += [Assistant(content="I would install nginx.")] * 3
    with pytest.raises(AgentFailed, match=r"all 3 turns without calling finish.*max_turns"):
        attempt(max_turns=3)
    assert len(chat_server.requests) == 3
    *_, assistant, nudge = chat_server.requests[1].messages
    assert assistant == {"role": "assistant", "content": "I would install nginx."}
    assert nudge["role"] == "user" and "call finish" in nudge["content"]


@pytest.mark.vm
def test_the_token_limit_stops_the_agent(chat_server: ChatServer, attempt: Attempt) -> None:
    chat_server.turns += [Assistant(tool_calls=[run("true")], usage=600)] * 2
    with pytest.raises(AgentFailed, match=r"1200 tokens, over the limit of 1000.*max_total_tokens"):
        attempt(max_total_tokens=1000)
    assert len(chat_server.requests) == 2


@pytest.mark.vm
def test_tokens_are_estimated_when_the_server_reports_no_usage(
    chat_server: ChatServer,
    attempt: Attempt,
) -> None:
    chat_server.turns += [Assistant(content="hm", usage=None)] * 2
    said: list[str] = []
    # The first request alone (system prompt + tool schemas) is well over 500 tokens.
    with pytest.raises(AgentFailed, match="max_total_tokens"):
        attempt(say=said.append, max_total_tokens=500)
    assert len(chat_server.requests) == 1
    assert "tokens ~" in said[0]


@pytest.mark.vm
def test_the_time_limit_stops_the_agent(chat_server: ChatServer, attempt: Attempt) -> None:
    chat_server.turns += [Assistant(content="thinking", delay=0.5)] * 2
    with pytest.raises(AgentFailed, match=r"worked for 0.4 s.*max_seconds"):
        attempt(max_seconds=0.4)
    assert len(chat_server.requests) == 1


@pytest.mark.vm
def test_old_tool_outputs_are_shortened_but_every_call_stays_answered(
    chat_server: ChatServer,
    attempt: Attempt,
) -> None:
    seq = "seq 1 2000"  # about 8.9 kB of output
    chat_server.turns += [Assistant(tool_calls=[run(seq), run(seq)]) for _ in range(3)]
    chat_server.turns.append(finish())
    attempt()

    third, last = chat_server.requests[2], chat_server.requests[3]
    # Four results fit the default of four kept whole.
    assert [len(m["content"]) > 8000 for m in third.tool_messages()] == [True] * 4
    results = last.tool_messages()
    assert len(results) == 6
    answered_once(last)
    for old in results[:2]:
        assert len(old["content"]) < 600
        assert "characters of this older tool output cut" in old["content"]
        assert old["content"].startswith("exit status 0\nstdout:\n1\n2\n")
        assert old["content"].endswith("1999\n2000\n")
    for new in results[2:]:
        assert len(new["content"]) > 8000 and "cut" not in new["content"]


@pytest.mark.vm
def test_reviewer_feedback_is_in_the_first_message_of_attempt_two(
    chat_server: ChatServer,
    tools: Toolbox,
    agent_box: sandboxes.Sandbox,
) -> None:
    chat_server.turns.append(finish())
    ctx = AgentContext(
        task="serve a hello page", sandbox_id=agent_box.id, attempt=2, feedback="use port 8080"
    )
    LLMAgent(endpoint(chat_server)).work(ctx, tools, say=lambda _: None)
    user = chat_server.requests[0].messages[1]
    assert user["role"] == "user"
    assert user["content"].startswith("Task: serve a hello page")
    assert "attempt 2" in user["content"] and user["content"].endswith("use port 8080")
