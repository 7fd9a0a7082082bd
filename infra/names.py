"""The one naming rule for sandboxes, checkpoints and images."""

from __future__ import annotations

import re

from infra.errors import InvalidName

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` if it matches ^[a-z0-9][a-z0-9-]{0,62}$, else raise InvalidName."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = name if len(str(name)) <= 40 else f"{str(name)[:37]}..."
        raise InvalidName(
            f"invalid {what} {shown!r}: use 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return name
