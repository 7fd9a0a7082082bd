"""Files a user hands an agent run (a scripted agent's steps, the guardrails): read as YAML,
with an error that names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra.errors import FluidError


def read_yaml(path: Path, what: str, error: type[FluidError], *, formats: str = "YAML") -> Any:
    """The data in the file at `path`; `error` naming it as `what` (e.g. "steps file") when it
    cannot be read or is not valid `formats`."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid {formats}: {e}") from e
