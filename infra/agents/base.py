"""The agent interface: a task, its tools, the reviewer's feedback in; a report out (or
AgentFailed, infra/agents/errors.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from infra.agents.tools import Toolbox

Progress = Callable[[str], None]


class AgentContext(BaseModel):
    """What an agent is given for one attempt."""

    task: str
    sandbox_id: str
    attempt: int = 1
    # The reviewer's comment on the previous attempt's playbook, when it was rejected.
    feedback: str | None = None


class AgentReport(BaseModel):
    """What an agent says it did."""

    summary: str
    actions: int


class Agent(Protocol):
    """Anything that can work on a task in a sandbox, touching it only through `tools`."""

    def work(self, ctx: AgentContext, tools: Toolbox, *, say: Progress) -> AgentReport: ...
