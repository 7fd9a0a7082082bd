"""Prefect block holding an LLM agent's endpoint: base URL, model, API key (a secret), limits."""

from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr

from blocks.docs import docs_url
from infra.agents.llm import LLMEndpoint


def _default(name: str) -> Any:
    # One source of truth for the limits: the endpoint model's defaults.
    return LLMEndpoint.model_fields[name].default


class LLMBlock(Block):
    """An OpenAI-compatible chat-completions endpoint the LLM agent works with.

    The API key lives here as a secret, never in a flow parameter (Prefect stores those in
    clear). No key: no Authorization header is sent (vLLM, Ollama, llama.cpp's server).
    """

    _block_type_name: ClassVar[str] = "fluid LLM Endpoint"
    _description: ClassVar[str] = (
        "An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp's "
        "server, LiteLLM) for fluid's LLM agent: base URL, model, API key (secret; empty "
        "sends no Authorization header) and the limits of one attempt."
    )
    _logo_url: ClassVar[None] = None
    _documentation_url: ClassVar[str] = docs_url("llm-agents-guardrails-audit-watching-live")
    model_config = ConfigDict(hide_input_in_errors=True)

    base_url: str = Field(
        description="API base URL; fluid posts to {base_url}/chat/completions, e.g. "
        "http://127.0.0.1:8000/v1, http://127.0.0.1:11434/v1 or https://api.openai.com/v1."
    )
    model: str = Field(min_length=1, description="Model name as the server knows it.")
    api_key: SecretStr | None = Field(
        default=None, description="API key, sent as a Bearer token; empty sends none."
    )
    max_turns: int = Field(default=_default("max_turns"), ge=1, description="Model requests.")
    max_seconds: float = Field(
        default=_default("max_seconds"), gt=0, description="Wall time of one attempt (s)."
    )
    max_total_tokens: int = Field(
        default=_default("max_total_tokens"),
        ge=1,
        description="Prompt + completion tokens of one attempt, summed over its requests.",
    )
    request_timeout_s: float = Field(
        default=_default("request_timeout_s"), gt=0, description="Seconds one request may take."
    )
    max_retries: int = Field(
        default=_default("max_retries"),
        ge=0,
        description="Retries (with backoff) of a request on 429, 5xx or connection errors.",
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature; empty: the server's."
    )
    keep_tool_results: int = Field(
        default=_default("keep_tool_results"),
        ge=0,
        description="Newest tool outputs sent whole; older ones are shortened.",
    )

    def endpoint(self) -> LLMEndpoint:
        """The endpoint and limits as the LLM agent takes them: each of the block's fields is the
        endpoint's of that name (the endpoint's defaults for the limits the block leaves out)."""
        return LLMEndpoint(**{name: getattr(self, name) for name in type(self).model_fields})
