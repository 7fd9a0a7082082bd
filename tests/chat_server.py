"""A local OpenAI-compatible chat-completions server that plays scripted model turns.

Listens on 127.0.0.1 (a free port) in a thread. Each POST to .../chat/completions takes the
next entry of `turns`: an `Assistant` message (content and/or tool calls), an `HTTPError`, or
a callable that gets the recorded request and returns one of those (to react to what the
agent sent). Every request is recorded (headers and JSON body) for assertions. A request with
no turn left, or a callable that raised, gets a 500 and is remembered in `problems`, which the
`chat_server` fixture turns into a test failure.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

AUTO = "auto"


@dataclass
class Request:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the parsed JSON, or the raw text when it was not JSON

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body["messages"]

    def tool_names(self) -> list[str]:
        """Names of the tools offered in this request."""
        return [t["function"]["name"] for t in self.body.get("tools", [])]

    def tool_messages(self) -> list[dict[str, Any]]:
        """The role=tool messages, oldest first."""
        return [m for m in self.messages if m.get("role") == "tool"]


@dataclass
class Assistant:
    """A scripted assistant message.

    `tool_calls` are (name, arguments) or (name, arguments, id) tuples; arguments is sent as
    given when it is a string (so it may be broken JSON), else JSON-encoded. An id of None
    leaves the id out. `usage`: AUTO estimates it from the request, None leaves `usage` out,
    an int is the total, a dict is sent as is. `delay` seconds pass before the answer.
    """

    content: str | None = None
    tool_calls: list[tuple] = field(default_factory=list)
    usage: Any = AUTO
    delay: float = 0.0
    finish_reason: str | None = None


@dataclass
class HTTPError:
    """A scripted HTTP error answer."""

    status: int
    body: Any = "error"
    retry_after: str | None = None


Turn = Assistant | HTTPError | Callable[[Request], Assistant | HTTPError]


class ChatServer:
    """The server; use as a context manager (or through the `chat_server` fixture)."""

    def __init__(self, turns: list[Turn] | None = None) -> None:
        self.turns: list[Turn] = list(turns or [])
        self.requests: list[Request] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        """The base URL to configure (…/v1)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def check(self) -> None:
        """Fail when a request found no turn left or a callable turn raised."""
        if self.problems:
            raise AssertionError("chat server: " + "\n".join(self.problems))

    # -- serving ------------------------------------------------------------------------

    def _answer(self, request: Request) -> tuple[int, dict[str, str], Any, float]:
        with self._lock:
            self.requests.append(request)
            number = len(self.requests)
            turn = self.turns.pop(0) if self.turns else None
        if not request.path.rstrip("/").endswith("/chat/completions"):
            return 404, {}, {"error": {"message": f"no route {request.path}"}}, 0.0
        if turn is None:
            problem = f"request #{number} came but no scripted turn was left"
            self.problems.append(problem)
            return 500, {}, {"error": {"message": problem}}, 0.0
        if callable(turn):
            try:
                turn = turn(request)
            except Exception:
                problem = f"the scripted turn for request #{number} raised:\n" + (
                    traceback.format_exc()
                )
                self.problems.append(problem)
                return 500, {}, {"error": {"message": problem}}, 0.0
        if isinstance(turn, HTTPError):
            headers = {"Retry-After": turn.retry_after} if turn.retry_after is not None else {}
            return turn.status, headers, turn.body, 0.0
        return 200, {}, self._completion(turn, request), turn.delay

    def _completion(self, turn: Assistant, request: Request) -> dict[str, Any]:
        n = next(self._ids)
        message: dict[str, Any] = {"role": "assistant", "content": turn.content}
        if turn.tool_calls:
            message["tool_calls"] = []
            for k, spec in enumerate(turn.tool_calls):
                name, arguments = spec[0], spec[1]
                tc: dict[str, Any] = {
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": arguments
                        if isinstance(arguments, str)
                        else json.dumps(arguments),
                    },
                }
                if len(spec) < 3:
                    tc["id"] = f"call_{n}_{k}"
                elif spec[2] is not None:
                    tc["id"] = spec[2]
                message["tool_calls"].append(tc)
        out: dict[str, Any] = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.body.get("model", "") if isinstance(request.body, dict) else "",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": turn.finish_reason
                    or ("tool_calls" if turn.tool_calls else "stop"),
                }
            ],
        }
        if turn.usage == AUTO:
            prompt = len(json.dumps(request.body)) // 4
            completion = len(json.dumps(message)) // 4
            out["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        elif isinstance(turn.usage, int):
            out["usage"] = {
                "prompt_tokens": turn.usage - 1,
                "completion_tokens": 1,
                "total_tokens": turn.usage,
            }
        elif turn.usage is not None:
            out["usage"] = turn.usage
        return out

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                request = Request(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                status, headers, payload, delay = server._answer(request)
                if delay:
                    time.sleep(delay)
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                ctype = "text/plain" if isinstance(payload, str) else "application/json"
                # The client may have given up (its timeout); then there is no one to tell.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler


@pytest.fixture(name="chat_server")
def chat_server_fixture() -> Iterator[ChatServer]:
    """A running ChatServer; the test fails if a request found no turn or a turn raised.

    Import it into a test module (`from tests.chat_server import chat_server_fixture`) and ask
    for `chat_server`."""
    with ChatServer() as server:
        yield server
    server.check()
