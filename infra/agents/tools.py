"""The agent's tools: the only way any agent (scripted, LLM or MCP client) touches a sandbox.

Seven tools — run_command, read_file, write_file, list_dir, checkpoint, restore, finish — each
checked by the guardrails, logged with its result and appended to the audit trail. Mistakes
(an unknown tool, arguments that are not JSON, a refused command) come back as a failed
ToolResult the caller can read and correct; only an exhausted budget raises.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import shlex
import stat
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any, Self

import paramiko
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infra.agents.errors import AgentFailed
from infra.errors import (
    CheckpointExists,
    CheckpointNotFound,
    CommandTimeout,
    FluidError,
    NotARegularFile,
    SSHError,
)
from infra.guardrails.errors import GuardrailViolation
from infra.guardrails.policy import Guardrails
from infra.machines import checkpoints, lifecycle, sandboxes
from infra.records import audit
from infra.settings import FluidSettings
from infra.transport import ssh
from infra.transport.command_output import CommandResult
from infra.transport.guest_shell import GuestShell
from infra.transport.protocol import Transport

# What one tool result may put in front of a model; the guest output cap applies first.
RESULT_CHARS = 16_000
LIST_DIR_LIMIT = 500
# Agent checkpoints live beside the flow's own ("before", "after-N") without clashing.
CHECKPOINT_PREFIX = "agent-"


class BudgetExhausted(AgentFailed):
    """The attempt used up a per-task budget of the guardrails (tool calls, commands, time)."""


class ToolResult(BaseModel):
    """What a tool call gave back; `content` is what the agent sees."""

    ok: bool
    content: str
    exit_status: int | None = None


class ToolSpec(BaseModel):
    """A tool as a model or MCP client sees it: name, description, JSON schema of arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunCommandArgs(_Args):
    command: str = Field(min_length=1, description="Shell command (bash), run as root.")
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds it may take (capped by the guardrails)."
    )


class PathArgs(_Args):
    path: str = Field(min_length=1, description="Absolute path in the sandbox.")


class WriteFileArgs(_Args):
    path: str = Field(min_length=1, description="Absolute path in the sandbox.")
    content: str = Field(description="The whole new content of the file (UTF-8).")
    mode: str | None = Field(
        default=None,
        pattern=r"^0?[0-7]{3,4}$",
        description="Octal mode such as 0644; default keeps an existing file's mode, else 0644.",
    )


class NameArgs(_Args):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="Checkpoint name (a-z, 0-9, -)."
    )


class FinishArgs(_Args):
    summary: str = Field(min_length=1, description="What you did and why, for the reviewer.")


_TOOLS: dict[str, tuple[type[_Args], str]] = {
    "run_command": (
        RunCommandArgs,
        "Run a bash command as root in the sandbox's persistent shell (the working directory "
        "and exported variables persist between calls). Returns the exit status and output.",
    ),
    "read_file": (PathArgs, "Read a text file."),
    "write_file": (
        WriteFileArgs,
        "Create or replace a file with the given content (parent folders are created).",
    ),
    "list_dir": (PathArgs, "List a directory: type, mode, size and name of each entry."),
    "checkpoint": (NameArgs, "Save the whole sandbox (disk and memory) under a name."),
    "restore": (NameArgs, "Return the sandbox to a checkpoint you saved earlier."),
    "finish": (FinishArgs, "End your work with a summary for the human reviewer."),
}


def tool_specs() -> list[ToolSpec]:
    """The seven tools with their argument schemas."""
    specs = []
    for name, (model, description) in _TOOLS.items():
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        specs.append(ToolSpec(name=name, description=description, parameters=schema))
    return specs


def _clip(text: str, limit: int = RESULT_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[… {len(text) - limit} characters cut …]\n{text[-half:]}"


def _short(value: object, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "⏎")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Toolbox:
    """The tools bound to one sandbox, one agent attempt and its guardrails."""

    specs: list[ToolSpec]

    def __init__(
        self,
        sandbox_id: str,
        *,
        settings: FluidSettings,
        guardrails: Guardrails | None = None,
        actor: str = "agent",
        run_id: str | None = None,
        say: Callable[[str], None] = print,
        env: dict[str, str] | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.settings = settings
        self.guardrails = guardrails or Guardrails()
        self.actor = actor
        self.run_id = run_id
        self.say = say
        self.specs = tool_specs()
        self.finished: str | None = None
        self.calls = 0
        self.commands = 0
        self.command_seconds = 0.0
        self._conn: ssh.GuestConnection | None = None
        self._shell = GuestShell(self._connect, env=env)

    # -- plumbing -------------------------------------------------------------------------

    def _connect(self) -> ssh.GuestConnection:
        return sandboxes.guest(self.sandbox_id, self.settings)

    def _guest(self) -> ssh.GuestConnection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _with_guest(self, op: Callable[[ssh.GuestConnection], Any]) -> Any:
        """Run a file operation; reconnect once if the connection died (e.g. after a restore)."""
        try:
            return op(self._guest())
        except (SSHError, EOFError, ConnectionError, paramiko.SSHException):
            self._drop_connection()
            return op(self._guest())

    def _drop_connection(self) -> None:
        if self._conn is not None:
            # A dead connection may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the shell and the connection."""
        self._shell.close()
        self._drop_connection()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the one entry point --------------------------------------------------------------

    def call(self, name: str, arguments: dict[str, Any] | str | None) -> ToolResult:
        """Run one tool call; a mistake is a failed result, an exhausted budget raises."""
        self.calls += 1
        if self.calls > self.guardrails.max_tool_calls:
            self._audit("tool-blocked", name, arguments, "budget of tool calls used up")
            raise BudgetExhausted(
                f"the agent used its budget of {self.guardrails.max_tool_calls} tool calls; "
                "raise max_tool_calls in the guardrails if the task needs more"
            )
        started = time.monotonic()
        blocked = False
        try:
            args = self._parse(name, arguments)
            result = getattr(self, f"_{name}")(args)
        except GuardrailViolation as e:
            blocked = True
            result = ToolResult(ok=False, content=f"refused by fluid's guardrails: {e}")
        except _BadCall as e:
            result = ToolResult(ok=False, content=str(e))
        except BudgetExhausted as e:
            self._audit("tool-blocked", name, arguments, str(e))
            raise
        except CommandTimeout as e:
            result = self._command_result(e.result, timed_out=True)  # type: ignore[arg-type]
        except FluidError as e:
            result = ToolResult(ok=False, content=f"{name} failed: {e}")
        took = time.monotonic() - started
        status = "refused" if blocked else ("ok" if result.ok else "error")
        self.say(
            f"tool {name}({_short(arguments or {})}) → {status} in {took:.1f} s: "
            f"{_short(result.content, 300)}"
        )
        self._audit(
            "tool-blocked" if blocked else "tool-call",
            name,
            arguments,
            result.content,
            ok=result.ok,
            exit_status=result.exit_status,
        )
        return result

    def _parse(self, name: str, arguments: dict[str, Any] | str | None) -> _Args:
        if name not in _TOOLS:
            raise _BadCall(f"there is no tool {name!r}; the tools are: {', '.join(_TOOLS)}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError as e:
                raise _BadCall(
                    f"the arguments of {name} are not valid JSON ({e}); send a JSON object"
                ) from e
        if not isinstance(arguments, dict):
            raise _BadCall(f"the arguments of {name} must be a JSON object")
        model = _TOOLS[name][0]
        try:
            return model.model_validate(arguments)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}"
                for err in e.errors()
            )
            raise _BadCall(f"invalid arguments for {name}: {problems}") from e

    def _audit(self, kind: str, name: str, arguments: object, result: str, **extra: object) -> None:
        audit.append(
            kind,
            actor=self.actor,
            summary=f"{name}({_short(arguments or {}, 200)})",
            sandbox_id=self.sandbox_id,
            run_id=self.run_id,
            detail={"tool": name, "arguments": arguments, "result": result[:2000], **extra},
            settings=self.settings,
        )

    # -- the tools --------------------------------------------------------------------------

    def _run_command(self, args: RunCommandArgs) -> ToolResult:
        g = self.guardrails
        g.check_command(args.command)
        if self.commands >= g.max_commands:
            raise BudgetExhausted(
                f"the agent used its budget of {g.max_commands} commands; raise max_commands "
                "in the guardrails if the task needs more"
            )
        if self.command_seconds >= g.max_command_seconds:
            raise BudgetExhausted(
                f"the agent's commands used their budget of {g.max_command_seconds:g} s; "
                "raise max_command_seconds in the guardrails if the task needs more"
            )
        self.commands += 1
        timeout = min(
            args.timeout or g.command_timeout_s,
            g.command_timeout_s,
            g.max_command_seconds - self.command_seconds,
        )
        self.say(f"$ {args.command}")
        try:
            r = self._shell.run(
                args.command, timeout=timeout, output_cap=g.output_cap_bytes, on_output=self.say
            )
        except CommandTimeout as e:
            self.command_seconds += e.result.duration_s  # type: ignore[attr-defined]
            lifecycle.record_command(self.sandbox_id, e.result, self.actor, self.settings)  # type: ignore[arg-type]
            raise
        self.command_seconds += r.duration_s
        lifecycle.record_command(self.sandbox_id, r, self.actor, self.settings)
        return self._command_result(r)

    @staticmethod
    def _command_result(r: CommandResult, *, timed_out: bool = False) -> ToolResult:
        head = (
            f"timed out after {r.duration_s:.0f} s and was killed"
            if timed_out
            else f"exit status {r.exit_status}"
        )
        parts = [head]
        if r.stdout:
            parts.append("stdout:\n" + r.stdout_text)
        if r.stderr:
            parts.append("stderr:\n" + r.stderr_text)
        if not r.stdout and not r.stderr:
            parts.append("(no output)")
        return ToolResult(
            ok=not timed_out, content=_clip("\n".join(parts)), exit_status=r.exit_status
        )

    def _resolve(self, path: str, *, write: bool) -> str:
        """The path the guardrails allow, symlinks followed in the guest."""
        normal = self.guardrails.check_path(path, write=write)
        r = self._with_guest(lambda c: c.run(f"realpath -m -- {shlex.quote(normal)}", timeout=30))
        resolved = r.stdout_text.strip() if r.exit_status == 0 else None
        return self.guardrails.check_path(normal, write=write, resolved=resolved or None)

    def _read_file(self, args: PathArgs) -> ToolResult:
        path = self._resolve(args.path, write=False)
        cap = self.guardrails.output_cap_bytes
        # Only the cap (and a byte to know there is more) is read: a sparse 100 GB file costs
        # no more than a small one, and a device or FIFO is refused before any read.
        try:
            got = self._with_guest(lambda c: c.read_head(path, cap))
        except FileNotFoundError:
            return ToolResult(ok=False, content=f"{args.path}: no such file")
        except NotARegularFile as e:
            return ToolResult(
                ok=False,
                content=f"{e}; read_file reads regular files only (use run_command, e.g. "
                "`head -c 200 FILE | xxd`, for anything else)",
            )
        except (PermissionError, OSError) as e:
            return ToolResult(ok=False, content=f"cannot read {args.path}: {e}")
        note = (
            f"\n[… only the first {cap} bytes are shown; the file says it has {got.size}; "
            "read further with run_command, e.g. `tail -c +N FILE | head -c M`]"
            if got.more
            else ""
        )
        try:
            # A multi-byte character cut at the cap is not a sign of binary content.
            text = codecs.getincrementaldecoder("utf-8")().decode(got.data, final=not got.more)
        except UnicodeDecodeError:
            text = None
        if text is None or "\0" in text:
            return ToolResult(
                ok=False,
                content=f"{args.path} is binary ({got.size} bytes); inspect it with "
                "run_command (e.g. `file`, `xxd | head`)",
            )
        return ToolResult(ok=True, content=_clip(text + note))

    def _write_file(self, args: WriteFileArgs) -> ToolResult:
        path = self._resolve(args.path, write=True)
        parent = str(PurePosixPath(path).parent)

        def write(c: ssh.GuestConnection) -> int:
            made = c.run(f"mkdir -p -- {shlex.quote(parent)}", timeout=30)
            if made.exit_status != 0:
                raise _BadCall(f"cannot create {parent}: {made.stderr_text.strip()}")
            mode = int(args.mode, 8) if args.mode else self._existing_mode(c, path) or 0o644
            c.upload_bytes(args.content.encode(), path, mode=mode)
            return mode

        try:
            mode = self._with_guest(write)
        except (PermissionError, OSError) as e:
            return ToolResult(ok=False, content=f"cannot write {args.path}: {e}")
        size = len(args.content.encode())
        return ToolResult(ok=True, content=f"wrote {size} bytes to {path} (mode {mode:04o})")

    @staticmethod
    def _existing_mode(c: Transport, path: str) -> int | None:
        r = c.run(f"stat -c %a -- {shlex.quote(path)}", timeout=30)
        return int(r.stdout_text.strip(), 8) if r.exit_status == 0 else None

    def _list_dir(self, args: PathArgs) -> ToolResult:
        path = self._resolve(args.path, write=False)
        try:
            # The listing stops at the limit: a directory of millions costs no more.
            listing = self._with_guest(lambda c: c.list_dir(path, LIST_DIR_LIMIT))
        except FileNotFoundError:
            return ToolResult(ok=False, content=f"{args.path}: no such directory")
        except OSError as e:
            return ToolResult(ok=False, content=f"cannot list {args.path}: {e}")
        lines = []
        for a in listing.entries:
            mode = a.st_mode or 0
            kind = "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "f"
            lines.append(f"{kind} {stat.S_IMODE(mode):04o} {a.st_size or 0:>10} {a.filename}")
        if listing.more:
            lines.append(
                f"[… only {len(listing.entries)} entries shown (the first the guest listed); "
                "the directory has more: narrow it with run_command, e.g. `ls DIR | head` or "
                "`find DIR -maxdepth 1 -name 'PATTERN'`]"
            )
        return ToolResult(ok=True, content=_clip("\n".join(lines)) or "(empty directory)")

    def _checkpoint(self, args: NameArgs) -> ToolResult:
        name = CHECKPOINT_PREFIX + args.name
        # Each holds the sandbox's disk changes and memory: the guardrails bound how many.
        mine = self._mine()
        limit = self.guardrails.max_checkpoints
        if len(mine) >= limit:
            raise GuardrailViolation(
                f"the guardrails allow {limit} checkpoints per sandbox and you have made "
                f"{len(mine)} ({', '.join(mine)}); restore one of them and work from there, "
                "or go on without a new checkpoint"
            )
        try:
            checkpoints.create(
                self.sandbox_id, name, self.settings, capture=False, actor=self.actor
            )
        except CheckpointExists:
            return ToolResult(ok=False, content=f"checkpoint {args.name!r} exists; pick a new name")
        return ToolResult(ok=True, content=f"checkpoint {args.name!r} saved")

    def _restore(self, args: NameArgs) -> ToolResult:
        try:
            checkpoints.restore(
                self.sandbox_id, CHECKPOINT_PREFIX + args.name, self.settings, actor=self.actor
            )
        except CheckpointNotFound:
            mine = self._mine()
            return ToolResult(
                ok=False,
                content=f"no checkpoint {args.name!r}; yours: {', '.join(mine) or 'none yet'}",
            )
        # The guest went back in time: its SSH connections and shell state are the old ones.
        self._drop_connection()
        self._shell.close()
        return ToolResult(ok=True, content=f"sandbox restored to checkpoint {args.name!r}")

    def _mine(self) -> list[str]:
        """The agent's checkpoints of this sandbox (the flow's own are not the agent's)."""
        return [
            c.name.removeprefix(CHECKPOINT_PREFIX)
            for c in checkpoints.list_checkpoints(self.sandbox_id, self.settings)
            if c.name.startswith(CHECKPOINT_PREFIX)
        ]

    def _finish(self, args: FinishArgs) -> ToolResult:
        self.finished = args.summary
        return ToolResult(ok=True, content="finished")


class _BadCall(FluidError):
    """A tool call the agent got wrong; its message tells the agent how to fix it."""
