"""Prefect block holding the guardrails an agent's tool calls are checked against."""

from typing import ClassVar, Self

from prefect.blocks.core import Block
from pydantic import Field, model_validator

from infra.guardrails import (
    DEFAULT_DENY_COMMANDS,
    DEFAULT_DENY_WRITE,
    DEFAULT_PROTECTED_PATHS,
    AbsolutePath,
    CommandRule,
    Guardrails,
    PathRule,
    PositiveCount,
    PositiveSeconds,
)


class GuardrailsBlock(Block):
    """The guardrails for agents: command deny/allow rules, file tool roots, limits.

    A block saved with no values holds the defaults; `to_guardrails()` gives the Guardrails
    the Toolbox checks each tool call against.
    """

    _block_type_name: ClassVar[str] = "fluid Guardrails"
    _description: ClassVar[str] = (
        "What fluid's agents may run and touch: command deny rules (by default: wiping the "
        "root filesystem, powering off, tampering with sshd or fluid's CA trust) and an "
        "optional allow list, matched on the parsed command; files no command may write; the "
        "roots the file tools read and write under; per-command timeout and output cap; "
        "per-attempt budgets of tool calls, commands and command time; checkpoints per sandbox."
    )
    _logo_url: ClassVar[None] = None

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
        description="Files no command may write (redirections, tee, cp, mv, rm, sed -i, ...).",
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
        default=10, description="Checkpoints an agent may make per sandbox."
    )

    @model_validator(mode="after")
    def _valid_guardrails(self) -> Self:
        # Fail when the block is built or loaded, not when an agent's first tool call is checked.
        # Block allows extra fields (Prefect stores its own), so a misspelt field is caught here.
        unknown = sorted(
            k for k in self.model_extra or {} if k != "block_type_slug" and not k.startswith("_")
        )
        if unknown:
            raise ValueError(f"unknown guardrails field(s): {', '.join(unknown)}")
        self.to_guardrails()
        return self

    def to_guardrails(self) -> Guardrails:
        """The Guardrails these values describe."""
        return Guardrails.model_validate(
            {name: getattr(self, name) for name in Guardrails.model_fields}
        )
