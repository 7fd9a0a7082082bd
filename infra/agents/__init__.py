"""Agents: whatever does the work inside a sandbox. The flow knows only `Agent.work`.

It owns the agent interface (`base`, and `errors` for AgentFailed), the agents (`scripted`,
`llm`, chosen by a flow parameter in `spec`), the seven tools that are an agent's only way into
a sandbox (`tools`: guardrails checked, audited), the MCP server that serves those tools to an
outside agent (`mcp_server`), and the reading of the files a user hands a run (`yaml_files`).
It may import infra's other packages (machines, transport, records, guardrails, settings);
nothing in infra imports it.
"""

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
