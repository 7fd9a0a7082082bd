"""Block loading: turn the flow parameters that name blocks (production, agent, guardrails)
into live objects, with an error saying how to make a block that is missing.

Kept apart from infra/agents because it reads Prefect blocks and secrets; the agents
themselves never see Prefect.
"""

from __future__ import annotations

import os

from blocks.legacy import load_saved
from blocks.production_target import ProductionTarget
from infra.agents import Agent, AgentSpec, LLMAgentSpec, ScriptedAgent, ScriptedAgentSpec
from infra.errors import FluidError, ProductionBlockError
from infra.guardrails.policy import Guardrails


class AgentConfigError(FluidError, ValueError):
    """The agent or guardrails parameter names a block or secret that cannot be used."""


def agent_spec(agent: AgentSpec | str) -> AgentSpec:
    """A spec from the flow parameter: a bare string names a saved LLM block."""
    return LLMAgentSpec(block=agent) if isinstance(agent, str) else agent


def build_agent(agent: AgentSpec | str) -> Agent:
    """The agent the parameter describes; AgentConfigError when a block or key is missing."""
    spec = agent_spec(agent)
    if isinstance(spec, ScriptedAgentSpec):
        return ScriptedAgent(spec)
    from infra.agents.llm import LLMAgent

    return LLMAgent(llm_endpoint(spec))


def llm_endpoint(spec: LLMAgentSpec):  # noqa: ANN201 - LLMEndpoint, imported lazily
    """The endpoint of an LLM spec, with its key from the block, a Secret block or the env."""
    from pydantic import SecretStr

    from blocks.llm import LLMBlock
    from infra.agents.llm import LLMEndpoint

    if spec.block is not None:
        try:
            return load_saved(LLMBlock, spec.block).endpoint()
        except ValueError as e:
            raise AgentConfigError(
                f"no LLM block named {spec.block!r}: save one (see the README, 'LLM agents') "
                f"or pass base_url and model ({e})"
            ) from e
    key: str | None = None
    if spec.api_key_secret:
        from prefect.blocks.system import Secret

        try:
            key = Secret.load(spec.api_key_secret).get()
        except ValueError as e:
            raise AgentConfigError(f"no Secret block named {spec.api_key_secret!r} ({e})") from e
    elif spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise AgentConfigError(
                f"the environment variable {spec.api_key_env} is not set where the flow runs "
                "(the worker's environment); set it there or save the key in an LLM block"
            )
    assert spec.base_url is not None and spec.model is not None
    return LLMEndpoint(
        base_url=spec.base_url, model=spec.model, api_key=SecretStr(key) if key else None
    )


def load_guardrails(name: str | None) -> Guardrails:
    """The guardrails block `name`, or fluid's defaults when no name is given."""
    if name is None:
        return Guardrails()
    from blocks.guardrails import GuardrailsBlock

    try:
        return load_saved(GuardrailsBlock, name).to_guardrails()
    except ValueError as e:
        raise AgentConfigError(f"no Guardrails block named {name!r} ({e})") from e


def load_target(production: str) -> ProductionTarget:
    """The ProductionTarget block `production`; ProductionBlockError saying how to make one."""
    try:
        return load_saved(ProductionTarget, production)
    except ValueError as e:
        raise ProductionBlockError(
            f"no ProductionTarget block named {production!r}: create one with `fluid production "
            f"create {production}` (a VM) or save a ProductionTarget for your hosts ({e})"
        ) from e
