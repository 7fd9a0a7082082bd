"""The one error the guardrails raise: a refusal whose message the agent is told."""

from __future__ import annotations

from infra.errors import FluidError


class GuardrailViolation(FluidError):
    """A tool call the guardrails refuse; str(e) is told to the agent."""
