"""Prefect block holding the guardrails an agent's tool calls are checked against."""

from typing import ClassVar, Self

from prefect.blocks.core import Block
from pydantic import model_validator

from blocks.docs import docs_url
from infra.guardrails.policy import Guardrails, GuardrailsFields


class GuardrailsBlock(Block, GuardrailsFields):
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
    _documentation_url: ClassVar[str] = docs_url("llm-agents-guardrails-audit-watching-live")

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
