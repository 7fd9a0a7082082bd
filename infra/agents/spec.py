"""What a flow parameter may say about the agent: scripted steps or an LLM endpoint."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, model_validator

from infra.agents.scripted import ScriptedAgentSpec


class LLMAgentSpec(BaseModel):
    """An LLM agent: a saved LLM block by name, or an endpoint given inline.

    The API key is never a parameter (Prefect stores parameters in clear): it comes from the
    block, from a Prefect Secret block (`api_key_secret`), or from an environment variable of
    the process running the flow (`api_key_env`). No key: no Authorization header is sent.
    """

    kind: Literal["llm"] = "llm"
    block: str | None = Field(default=None, description="Name of a saved LLM endpoint block.")
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1"
    )
    model: str | None = Field(default=None, description="Model name the server knows.")
    api_key_secret: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the API key."
    )
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key where the flow runs."
    )

    @model_validator(mode="after")
    def _block_or_endpoint(self) -> Self:
        if self.block is None and not (self.base_url and self.model):
            raise ValueError("an LLM agent needs `block`, or both `base_url` and `model`")
        if self.block is not None and (self.base_url or self.model):
            raise ValueError("give an LLM agent either `block` or `base_url` + `model`, not both")
        return self


AgentSpec = Annotated[ScriptedAgentSpec | LLMAgentSpec, Field(discriminator="kind")]
