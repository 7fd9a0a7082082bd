"""Agents: whatever does the work inside a sandbox. The flow knows only `Agent.work`."""

from infra.agents.base import Agent, AgentContext, AgentReport
from infra.agents.errors import AgentFailed
from infra.agents.scripted import ScriptedAgent, ScriptedAgentSpec, Step
from infra.agents.spec import AgentSpec, LLMAgentSpec

__all__ = [
    "Agent",
    "AgentContext",
    "AgentFailed",
    "AgentReport",
    "AgentSpec",
    "LLMAgentSpec",
    "ScriptedAgent",
    "ScriptedAgentSpec",
    "Step",
]
