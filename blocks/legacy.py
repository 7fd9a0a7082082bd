"""Blocks saved under a block type's name from before fluid's types were named "fluid …".

Renaming a block type changes its slug ("production-target" became
"fluid-production-target"), and Prefect finds a block by slug and name, so a block saved
before the rename is not found under the new type. `load_saved` loads it from the old slug,
with a warning that says how to save it again under the new one; the old document is left as
it is (`prefect block delete OLD-SLUG/NAME` removes it).
"""

from __future__ import annotations

import logging
from typing import TypeVar

from prefect.blocks.core import Block

B = TypeVar("B", bound=Block)

# The slug each renamed type had before.
LEGACY_SLUGS = {
    "fluid-production-target": "production-target",
    "fluid-llm-endpoint": "llm-endpoint",
}

logger = logging.getLogger("fluid.blocks")


def load_saved(cls: type[B], name: str) -> B:
    """Block `name` of type `cls`, falling back to the type's old slug; ValueError when
    neither holds one (as `Block.load` raises)."""
    try:
        return cls.load(name)
    except ValueError:
        old = LEGACY_SLUGS.get(cls.get_block_type_slug())
        block = _load_legacy(cls, old, name) if old else None
        if block is None:
            raise
        logger.warning(
            "block %s/%s is saved under the block type's old name; save it again as %s/%s "
            "(load it and .save(%r)), then `prefect block delete %s/%s`",
            old,
            name,
            cls.get_block_type_slug(),
            name,
            name,
            old,
            name,
        )
        return block


def _load_legacy(cls: type[B], slug: str, name: str) -> B | None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            doc = client.read_block_document_by_name(name, slug, include_secrets=True)
        except ObjectNotFound:
            return None
    return cls.model_validate(doc.data)
