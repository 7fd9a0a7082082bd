"""Agents: whatever does the work inside a sandbox. The flow knows only `Agent.work`."""

from infra.agents.base import Agent, AgentContext, AgentFailed, AgentReport
from infra.agents.scripted import ScriptedAgent, ScriptedAgentSpec, Step

AgentSpec = ScriptedAgentSpec


def build(spec: AgentSpec) -> Agent:
    """The agent a flow parameter describes."""
    return ScriptedAgent(spec)


__all__ = [
    "Agent",
    "AgentContext",
    "AgentFailed",
    "AgentReport",
    "AgentSpec",
    "ScriptedAgent",
    "ScriptedAgentSpec",
    "Step",
    "build",
]
