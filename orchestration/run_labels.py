"""What an agent-task flow run is called and tagged in Prefect, from its parameters.

The name reads "<production>: <task>" (e.g. "web: install nginx"), so the runs list says what
each run does; the tags (`production:<target>`, `agent:<kind>`, `host:<id>`) filter it. The
task is user input: every control or format character goes (runs of whitespace become one
space) and it is cut to a length a list shows whole.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

TASK_CHARS = 60
PRODUCTION_CHARS = 40
_SPACE = re.compile(r"\s+")


def _clean(text: str, limit: int) -> str:
    spaced = _SPACE.sub(" ", str(text))
    kept = "".join(c for c in spaced if not unicodedata.category(c).startswith("C")).strip()
    return kept if len(kept) <= limit else kept[: limit - 1].rstrip() + "…"


def run_name(task: str, production: str) -> str:
    """ "<production>: <task>", both cleaned and shortened."""
    return f"{_clean(production, PRODUCTION_CHARS)}: {_clean(task, TASK_CHARS) or '(no task)'}"


def agent_kind(agent: Any) -> str:
    """ "scripted" or "llm" for the flow's `agent` parameter (a bare name is an LLM block)."""
    if isinstance(agent, str):
        return "llm"
    kind = agent.get("kind") if isinstance(agent, dict) else getattr(agent, "kind", None)
    return _clean(kind or "unknown", 20)


def run_tags(production: str, agent: Any, host: str | None) -> list[str]:
    """The run's tags: its production target, agent kind and (once placed) host."""
    tags = [f"production:{_clean(production, PRODUCTION_CHARS)}", f"agent:{agent_kind(agent)}"]
    if host:
        tags.append(f"host:{_clean(host, 63)}")
    return tags
