"""What an agent's attempt raises when it cannot finish: the interface (base) and the tools
both need it, and neither owns the other."""

from __future__ import annotations

from infra.errors import FluidError


class AgentFailed(FluidError):
    """The agent could not finish its attempt (a step failed, a limit was reached)."""
