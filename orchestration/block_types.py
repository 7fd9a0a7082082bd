"""fluid's block types on the Prefect server: registered when fluid's server starts, so the
UI's block catalog offers them ("fluid Production Target", "fluid LLM Endpoint", "fluid
Guardrails") before anyone saved one from Python.

Registration is `prefect block register -m blocks` (also the documented command for a server
fluid did not start). It runs again when blocks/ changed since the last registration, or when
the server lacks one of the types (a new database). Imports no Prefect: it runs that command.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from infra.host.permissions import write_private
from infra.settings import FluidSettings
from orchestration.prefect_api import ControlPlane, api_status

BLOCKS = Path(__file__).resolve().parent.parent / "blocks"
# The slugs of the types in blocks/ (Prefect's slug of each `_block_type_name`).
SLUGS = ("fluid-production-target", "fluid-llm-endpoint", "fluid-guardrails")
REGISTER = ["block", "register", "-m", "blocks"]


def _digest() -> str:
    h = hashlib.sha256()
    for f in sorted(BLOCKS.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def missing(cp: ControlPlane) -> list[str]:
    """The slugs of fluid's block types the server at `cp` does not know."""
    return [
        slug
        for slug in SLUGS
        if api_status(f"{cp.api_url}/block_types/slug/{urllib.parse.quote(slug)}", cp.auth_string)
        != 200
    ]


def ensure_registered(
    cp: ControlPlane,
    settings: FluidSettings,
    prefect_cli: Callable[[list[str]], str],
    say: Callable[[str], None],
) -> None:
    """Register fluid's block types with `prefect_cli` (runs `prefect ARGS` against `cp`)
    unless the server has them all, from this version of blocks/."""
    stamp = settings.prefect_dir / "blocks-registered"
    if stamp.exists() and stamp.read_text() == _digest() and not missing(cp):
        return
    say("registering fluid's block types")
    prefect_cli(REGISTER)
    write_private(stamp, _digest().encode())
