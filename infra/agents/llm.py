"""The LLM agent: an OpenAI-compatible chat-completions model that works through fluid's tools.

Speaks the plain HTTP protocol (POST {base_url}/chat/completions with `tools`), so it works
with OpenAI, vLLM, Ollama, llama.cpp's server and LiteLLM alike. With no API key, no
Authorization header is sent at all (local servers need none, and some reject a bogus one).
"""

from __future__ import annotations

import email.utils
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from infra.agents.base import AgentContext, AgentReport, Progress
from infra.agents.errors import AgentFailed

if TYPE_CHECKING:
    from infra.agents.tools import Toolbox

SYSTEM_PROMPT = """\
You are an infrastructure engineer working autonomously inside a disposable Debian 12 \
(bookworm) virtual machine, where you are root. Nothing you do here can harm anything else.

How your work is used: fluid captures the machine's state before and after your work \
(packages, files, services, users, cron, sysctl) and turns the difference into an Ansible \
playbook. A human reviews that playbook, and once approved it is applied to production \
machines. So only what you leave behind on this machine matters, and it must be something \
a reviewer can understand and production can reproduce:

- Make declarative, reproducible changes: install packages with `apt-get install -y` (run \
`apt-get update` first), write whole configuration files with write_file rather than \
patching them with sed or echo >>, and enable services with `systemctl enable --now`.
- No temporary hacks, workarounds you would not want in production, or leftover scratch \
files; clean up what you only needed along the way.
- Never run interactive commands (editors, pagers, prompts: use -y, DEBIAN_FRONTEND is \
noninteractive) and never start long-running processes in the foreground; a service belongs \
in systemd.
- Check your work (e.g. curl a page you serve, `systemctl is-active` a service) before you \
finish.

Tools (call them; do not describe calls in prose):
- run_command(command): runs a shell command as root in a persistent shell (the working \
directory and exported variables persist between calls); returns its exit status and output.
- read_file(path): reads a file (absolute path).
- write_file(path, content, mode?): writes a whole file (absolute path), mode such as "0644".
- list_dir(path): lists a directory.
- checkpoint(name): snapshots the machine so you can go back to it.
- restore(name): returns the machine to a checkpoint (undoing everything since).
- finish(summary): call it once when the task is done, with a short summary of what you \
changed and how you checked it. It ends your work.

Some commands are refused by guardrails; a refused or failed call returns an error that says \
why, so adjust and carry on.
"""

NUDGE = (
    "You did not call a tool. Do the work with the tools (run_command, read_file, write_file, "
    "list_dir, checkpoint, restore), and call finish(summary) when the task is done."
)

# Seconds a server asks us to wait (Retry-After) are honoured up to retry_max_wait_s.
_RETRY_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


class LLMLimitReached(AgentFailed):
    """The agent used up its turns, time or tokens before calling finish."""


class LLMRequestFailed(AgentFailed):
    """The model endpoint refused a request or could not be reached after retries."""


class LLMEndpoint(BaseModel):
    """An OpenAI-compatible chat-completions endpoint and the limits of one agent attempt."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    base_url: str = Field(
        description="API base URL; requests go to {base_url}/chat/completions, "
        "e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1."
    )
    model: str = Field(min_length=1, description="Model name as the server knows it.")
    api_key: SecretStr | None = Field(
        default=None, description="Sent as `Authorization: Bearer KEY`; empty sends no header."
    )
    max_turns: int = Field(default=40, ge=1, description="Model requests per attempt.")
    max_seconds: float = Field(default=1800.0, gt=0, description="Wall time per attempt.")
    max_total_tokens: int = Field(
        default=400_000,
        ge=1,
        description="Prompt + completion tokens per attempt (from `usage`; estimated without).",
    )
    request_timeout_s: float = Field(default=300.0, gt=0, description="Seconds per request.")
    max_retries: int = Field(
        default=5, ge=0, description="Retries of a request on 429, 5xx or connection errors."
    )
    retry_backoff_s: float = Field(
        default=1.0, ge=0, description="First retry delay; doubles with each retry."
    )
    retry_max_wait_s: float = Field(
        default=60.0, ge=0, description="Longest wait between retries (also caps Retry-After)."
    )
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature.")
    keep_tool_results: int = Field(
        default=4, ge=0, description="Newest tool outputs sent whole; older ones are shortened."
    )
    old_tool_result_chars: int = Field(
        default=400, ge=50, description="Characters kept of an older tool output."
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value.endswith("/chat/completions"):
            value = value.removesuffix("/chat/completions")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value

    @field_validator("api_key")
    @classmethod
    def _blank_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @property
    def url(self) -> str:
        """Where chat completions are posted."""
        return f"{self.base_url}/chat/completions"


class ChatReply(BaseModel):
    """One assistant message and what it cost."""

    message: dict[str, Any]
    finish_reason: str | None = None
    tokens: int
    tokens_estimated: bool = False


class ChatClient:
    """Posts chat-completion requests, retrying 429, 5xx and connection errors with backoff."""

    def __init__(self, endpoint: LLMEndpoint, *, say: Progress = print) -> None:
        self.endpoint = endpoint
        self._say = say
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if endpoint.api_key is not None:
            headers["Authorization"] = f"Bearer {endpoint.api_key.get_secret_value()}"
        self._http = httpx.Client(headers=headers, timeout=endpoint.request_timeout_s)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, body: dict[str, Any], *, deadline: float | None = None) -> ChatReply:
        """POST one request; LLMRequestFailed on a refusal, or when retries run out."""
        ep = self.endpoint
        attempt = 0
        while True:
            timeout = ep.request_timeout_s
            if deadline is not None:
                timeout = max(1.0, min(timeout, deadline - time.monotonic()))
            try:
                response = self._http.post(ep.url, json=body, timeout=timeout)
            except httpx.TransportError as e:
                problem = f"cannot reach {ep.url}: {type(e).__name__}: {e}"
                retry_after = None
            else:
                if response.status_code < 300:
                    return _parse_reply(response, body)
                problem = f"{ep.url} answered {response.status_code}: {_error_text(response)}"
                if response.status_code not in _RETRY_STATUSES:
                    raise LLMRequestFailed(problem + _hint(response.status_code))
                retry_after = _retry_after(response.headers.get("retry-after"))
            if attempt >= ep.max_retries:
                raise LLMRequestFailed(
                    f"{problem} (gave up after {attempt + 1} tries; max_retries={ep.max_retries})"
                )
            wait = ep.retry_backoff_s * 2**attempt if retry_after is None else retry_after
            wait = min(wait, ep.retry_max_wait_s)
            if deadline is not None and time.monotonic() + wait > deadline:
                raise LLMLimitReached(
                    f"{problem}; no time left to retry within max_seconds={ep.max_seconds:g} "
                    "(raise the endpoint's max_seconds)"
                )
            attempt += 1
            self._say(f"model request failed ({problem}); retry {attempt} in {wait:.1f} s")
            time.sleep(wait)


def _parse_reply(response: httpx.Response, body: dict[str, Any]) -> ChatReply:
    try:
        data = response.json()
    except ValueError as e:
        raise LLMRequestFailed(
            f"the model endpoint answered {response.status_code} with something other than "
            f"JSON: {response.text[:300]!r}"
        ) from e
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices[0], dict) or "message" not in choices[0]:
        detail = data.get("error") if isinstance(data, dict) and "error" in data else data
        raise LLMRequestFailed(f"the model endpoint sent no reply message: {str(detail)[:500]}")
    message = choices[0]["message"] or {}
    usage = data.get("usage") or {}
    tokens = usage.get("total_tokens")
    if tokens is None and usage.get("prompt_tokens") is not None:
        tokens = usage["prompt_tokens"] + (usage.get("completion_tokens") or 0)
    estimated = tokens is None
    if estimated:
        # ~4 characters a token: rough, but keeps the budget meaningful on servers that do
        # not report usage.
        tokens = (len(json.dumps(body)) + len(json.dumps(message))) // 4
    return ChatReply(
        message=message,
        finish_reason=choices[0].get("finish_reason"),
        tokens=int(tokens),
        tokens_estimated=estimated,
    )


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:500]
        return str(err)[:500]
    return str(data)[:500]


def _hint(status: int) -> str:
    if status in (401, 403):
        return " (check the API key in the LLM block)"
    if status == 404:
        return " (check base_url, which should end in /v1 for most servers, and the model name)"
    return ""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def first_user_message(ctx: AgentContext) -> str:
    """The task, and on a later attempt the reviewer's feedback on the rejected one."""
    text = f"Task: {ctx.task}"
    if ctx.attempt > 1:
        text += (
            f"\n\nThis is attempt {ctx.attempt}. A reviewer rejected the playbook made from "
            "the previous attempt. This machine is a fresh one: none of the previous "
            "attempt's changes are here, so do the whole task again."
        )
        if ctx.feedback:
            text += f" The reviewer's feedback:\n\n{ctx.feedback}"
    return text


def bounded(messages: list[dict[str, Any]], *, keep: int, chars: int) -> list[dict[str, Any]]:
    """The messages with all but the `keep` newest tool outputs cut to about `chars` characters.

    Every message and tool_call_id stays, so the conversation remains valid for the server.
    """
    tool_positions = [i for i, m in enumerate(messages) if m.get("role") == "tool"]
    old = set(tool_positions[: max(0, len(tool_positions) - keep)])
    out = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if i in old and isinstance(content, str) and len(content) > chars:
            m = {**m, "content": shorten(content, chars)}
        out.append(m)
    return out


def shorten(text: str, chars: int) -> str:
    """The head and tail of `text` (about `chars` characters) with a marker saying what was cut."""
    tail = chars // 4
    head = chars - tail
    cut = len(text) - head - tail
    return (
        f"{text[:head]}\n[... {cut} characters of this older tool output cut to keep the "
        f"context small ...]\n{text[-tail:]}"
    )


class _Call(BaseModel):
    id: str
    name: str
    arguments: dict | str


def _tool_calls(message: dict[str, Any], turn: int) -> list[_Call]:
    calls: list[_Call] = []
    seen: set[str] = set()
    for n, raw in enumerate(message.get("tool_calls") or []):
        raw = raw if isinstance(raw, dict) else {}
        fn = raw.get("function") if isinstance(raw.get("function"), dict) else {}
        # A call without an id cannot be answered; give it one the reply can refer to.
        call_id = str(raw.get("id") or f"call_fluid_{turn}_{n}_{uuid.uuid4().hex[:8]}")
        if call_id in seen:
            # A repeated id would leave one tool message answering two calls.
            call_id = f"{call_id}_{n}"
        seen.add(call_id)
        args = fn.get("arguments")
        if args is None or (isinstance(args, str) and not args.strip()):
            args = "{}"  # some servers send "" for a call without arguments
        if not isinstance(args, dict | str):
            args = json.dumps(args)
        calls.append(_Call(id=call_id, name=str(fn.get("name") or ""), arguments=args))
    return calls


def _assistant_message(message: dict[str, Any], calls: list[_Call]) -> dict[str, Any]:
    """The assistant's message as it is sent back: its calls with their (possibly new) ids."""
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.arguments
                    if isinstance(c.arguments, str)
                    else json.dumps(c.arguments),
                },
            }
            for c in calls
        ]
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return " ".join(str(content or "").split())


class LLMAgent:
    """An Agent driven by a chat-completions model with tool calling."""

    def __init__(self, endpoint: LLMEndpoint) -> None:
        self.endpoint = endpoint

    def work(self, ctx: AgentContext, tools: Toolbox, *, say: Progress) -> AgentReport:
        """Let the model work on the task until it calls finish; AgentFailed at a limit."""
        ep = self.endpoint
        deadline = time.monotonic() + ep.max_seconds
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": first_user_message(ctx)},
        ]
        tool_defs = [
            {
                "type": "function",
                "function": {
                    "name": s.name,
                    "description": s.description,
                    "parameters": s.parameters,
                },
            }
            for s in tools.specs
        ]
        turns = tokens = actions = 0
        with self._client(say) as client:
            while True:
                self._check_limits(turns, tokens, deadline)
                body: dict[str, Any] = {
                    "model": ep.model,
                    "messages": bounded(
                        messages, keep=ep.keep_tool_results, chars=ep.old_tool_result_chars
                    ),
                    "tools": tool_defs,
                    "tool_choice": "auto",
                }
                if ep.temperature is not None:
                    body["temperature"] = ep.temperature
                reply = client.complete(body, deadline=deadline)
                turns += 1
                tokens += reply.tokens
                calls = _tool_calls(reply.message, turns)
                messages.append(_assistant_message(reply.message, calls))
                say(self._turn_line(turns, reply, calls, tokens))
                if not calls:
                    messages.append({"role": "user", "content": NUDGE})
                    continue
                results = self._run_calls(calls, tools)
                actions += sum(1 for c in calls if c.name != "finish")
                messages += [
                    {"role": "tool", "tool_call_id": c.id, "content": results[c.id]} for c in calls
                ]
                if tools.finished is not None:
                    return AgentReport(summary=tools.finished, actions=actions)

    @contextmanager
    def _client(self, say: Progress) -> Iterator[ChatClient]:
        client = ChatClient(self.endpoint, say=say)
        try:
            yield client
        finally:
            client.close()

    def _run_calls(self, calls: list[_Call], tools: Toolbox) -> dict[str, str]:
        # finish goes last, so the calls beside it in the same message still happen.
        ordered = sorted(calls, key=lambda c: c.name == "finish")
        results: dict[str, str] = {}
        for c in ordered:
            if not c.name:
                results[c.id] = (
                    "error: this tool call names no function; call one of: "
                    + ", ".join(s.name for s in tools.specs)
                )
                continue
            results[c.id] = tools.call(c.name, c.arguments).content
        return results

    def _check_limits(self, turns: int, tokens: int, deadline: float) -> None:
        ep = self.endpoint
        if turns >= ep.max_turns:
            raise LLMLimitReached(
                f"the model used all {ep.max_turns} turns without calling finish (raise "
                "max_turns on the LLM block, or make the task smaller)"
            )
        if tokens >= ep.max_total_tokens:
            raise LLMLimitReached(
                f"the model used {tokens} tokens, over the limit of {ep.max_total_tokens}, "
                "without calling finish (raise max_total_tokens on the LLM block)"
            )
        if time.monotonic() >= deadline:
            raise LLMLimitReached(
                f"the model worked for {ep.max_seconds:g} s without calling finish (raise "
                "max_seconds on the LLM block)"
            )

    def _turn_line(self, turn: int, reply: ChatReply, calls: list[_Call], tokens: int) -> str:
        text = _text(reply.message.get("content"))
        if len(text) > 300:
            text = text[:300] + "..."
        named = ", ".join(c.name or "?" for c in calls) or "no tool call"
        approx = "~" if reply.tokens_estimated else ""
        return (
            f"model turn {turn}/{self.endpoint.max_turns}: {named}"
            + (f" | {text}" if text else "")
            + f" | tokens {approx}{tokens}/{self.endpoint.max_total_tokens}"
        )
