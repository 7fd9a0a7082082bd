"""The guardrails' decision: whether a tool call's command or path may go ahead, and the
per-command and per-attempt limits the tools enforce.

They stop an agent from destroying what makes its sandbox useful (wiping the root filesystem,
powering off, locking fluid out of sshd); they are not a security boundary, the VM is. A root
shell can always hide a command from any parser (a script file, python -c, ...), so the rules
aim at the mistakes an agent makes, and refuse with a reason it can act on. Commands are judged
on what `shell_commands` finds they run, never on substrings of the command line.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from infra.guardrails.argv import program_name, write_targets
from infra.guardrails.errors import GuardrailViolation
from infra.guardrails.paths import AbsolutePath, may_write, normpath, under
from infra.guardrails.rules import (
    DEFAULT_DENY_COMMANDS,
    DEFAULT_DENY_WRITE,
    DEFAULT_PROTECTED_PATHS,
    CommandRule,
    PathRule,
    deny_write_reason,
)
from infra.guardrails.shell_commands import parse

PositiveSeconds = Annotated[float, Field(gt=0)]
PositiveCount = Annotated[int, Field(gt=0)]


class GuardrailsFields(BaseModel):
    """The guardrails' settings, declared once for the Guardrails model and for the Prefect
    block that stores them."""

    deny_commands: list[CommandRule] = Field(
        default_factory=lambda: list(DEFAULT_DENY_COMMANDS),
        description="Commands refused wherever they appear in a command line.",
    )
    allow_commands: list[CommandRule] = Field(
        default_factory=list,
        description="When not empty, every command must match one of these (deny still wins).",
    )
    protected_paths: list[PathRule] = Field(
        default_factory=lambda: list(DEFAULT_PROTECTED_PATHS),
        description="Files no command may write through a redirection or a file-changing "
        "command (tee, cp, mv, rm, sed -i, chmod, dd of=, ...).",
    )
    read_roots: list[AbsolutePath] = Field(
        default_factory=lambda: ["/"], description="The file tools read only under these."
    )
    write_roots: list[AbsolutePath] = Field(
        default_factory=lambda: ["/"], description="The file tools write only under these."
    )
    deny_write: list[AbsolutePath] = Field(
        default_factory=lambda: list(DEFAULT_DENY_WRITE),
        description="The file tools never write these paths (or globs) or anything under them.",
    )
    command_timeout_s: PositiveSeconds = Field(
        default=600, description="A command running longer is killed (seconds)."
    )
    output_cap_bytes: PositiveCount = Field(
        default=64_000, description="A command's output beyond this many bytes is cut."
    )
    max_tool_calls: PositiveCount = Field(default=300, description="Tool calls per attempt.")
    max_commands: PositiveCount = Field(default=200, description="Commands run per attempt.")
    max_command_seconds: PositiveSeconds = Field(
        default=3600, description="Total seconds commands may run per attempt."
    )
    max_checkpoints: PositiveCount = Field(
        default=10,
        description="Checkpoints an agent may make per sandbox (each holds its disk changes "
        "and memory); the flow's own are not counted.",
    )


class Guardrails(GuardrailsFields):
    """What an agent may run and touch, and its per-command and per-attempt limits.

    `Guardrails()` is the default set: every command allowed except DEFAULT_DENY_COMMANDS,
    files readable everywhere and writable outside /proc, /sys, /dev, /boot and fluid's sshd
    files.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _deny_rules_explain(self) -> Self:
        for rule in self.deny_commands:
            if not rule.reason.strip():
                raise ValueError(f"deny rule for {rule.program!r} needs a reason for the agent")
        return self

    def check_command(self, command: str) -> None:
        """Raise GuardrailViolation unless every part of the shell `command` may run."""
        parsed = parse(command)
        for argv in parsed.commands:
            for rule in self.deny_commands:
                if rule.matches(argv):
                    raise GuardrailViolation(f"guardrails refused `{_show(argv)}`: {rule.reason}")
        for argv in parsed.commands:
            for target, tree in write_targets(argv):
                if reason := self._protected(target, tree):
                    raise GuardrailViolation(
                        f"guardrails refused `{_show(argv)}`: it changes {target}; {reason}"
                    )
        for op, target in parsed.redirects:
            if reason := self._protected(normpath(target), tree=False):
                raise GuardrailViolation(
                    f"guardrails refused the redirection `{op} {target}`: {reason}"
                )
        if self.allow_commands:
            for argv in parsed.commands:
                if not any(rule.matches(argv) for rule in self.allow_commands):
                    allowed = ", ".join(dict.fromkeys(r.program for r in self.allow_commands))
                    raise GuardrailViolation(
                        f"guardrails refused `{_show(argv)}`: {program_name(argv[0])} is not on "
                        f"the allow list; allowed programs: {allowed}"
                    )

    def check_path(self, path: str, *, write: bool, resolved: str | None = None) -> str:
        """The path a file tool should use, or GuardrailViolation.

        `path` must be absolute; it is normalised lexically (`..` cannot climb above /).
        `resolved` is the guest's `realpath -m` of it (symlinks followed) and must pass the
        same checks; it is returned when given, else the normalised path.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise GuardrailViolation(
                f"{path!r} is not an absolute path: the file tools have no working directory, "
                "so give the full path, starting with /"
            )
        normal = self._check_path(path, write, via="")
        if resolved is None:
            return normal
        if not resolved.startswith("/"):
            raise GuardrailViolation(f"could not resolve {path} to an absolute path ({resolved!r})")
        return self._check_path(resolved, write, via=f"{path} resolves to {normpath(resolved)}: ")

    def _check_path(self, path: str, write: bool, via: str) -> str:
        if "\0" in path:
            raise GuardrailViolation(f"{via}{path!r} contains a NUL byte")
        normal = normpath(path)
        kind, roots = ("write", self.write_roots) if write else ("read", self.read_roots)
        if not any(under(normal, root) for root in roots):
            if not roots:
                raise GuardrailViolation(f"{via}the guardrails allow no file {kind}s")
            raise GuardrailViolation(
                f"{via}{normal} is outside the guardrails' {kind} roots "
                f"({', '.join(roots)}); use a path under one of them"
            )
        if write:
            for entry in self.deny_write:
                if under(normal, entry):
                    raise GuardrailViolation(
                        f"{via}writing {normal} is refused: it is under {entry}; "
                        f"{deny_write_reason(entry)}"
                    )
        return normal

    def _protected(self, target: str, tree: bool) -> str | None:
        """The reason writing `target` (with `tree`: anything under it) is refused, or None."""
        if not target.startswith("/"):
            return None  # relative to a working directory the guardrails cannot know
        for rule in self.protected_paths:
            if may_write(target, rule.path, tree):
                return rule.reason
        return None


def _show(argv: Sequence[str], limit: int = 200) -> str:
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."
