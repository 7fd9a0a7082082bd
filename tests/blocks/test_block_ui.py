"""fluid's block types in the Prefect UI, in headless Chromium: the catalog offers them, and a
block made with the UI's form is what a flow loads."""

from __future__ import annotations

import os
from pathlib import Path

from orchestration.prefect_api import ControlPlane


def test_the_catalog_offers_fluids_block_types_and_a_block_made_in_the_ui_loads(
    prefect_stack: ControlPlane, tmp_path: Path
) -> None:
    from blocks.loading import load_guardrails
    from infra.guardrails.policy import Guardrails
    from tests import prefect_ui, prefect_ui_blocks

    shots = tmp_path / "shots"
    name = f"t-ui-guardrails-{os.urandom(3).hex()}"
    with prefect_ui.browser(shots) as page:
        prefect_ui.login(page, prefect_stack.ui_url, prefect_stack.auth_string.get_secret_value())
        listed = prefect_ui_blocks.catalog_names(page, prefect_stack.ui_url, "fluid", shots)
        assert listed == ["fluid Guardrails", "fluid LLM Endpoint", "fluid Production Target"]
        prefect_ui_blocks.create_block(
            page,
            prefect_stack.ui_url,
            "fluid-guardrails",
            name,
            {"Max Tool Calls": "123", "Write Roots": '["/srv"]'},
            shots,
        )
        prefect_ui_blocks.wait_for_block(page, "fluid-guardrails", name)

    # Loaded as a flow loads its `guardrails` parameter.
    guardrails = load_guardrails(name)
    assert guardrails.max_tool_calls == 123
    assert guardrails.write_roots == ["/srv"]
    # Fields left empty in the form keep fluid's defaults, the deny rules above all.
    assert guardrails.deny_commands == Guardrails().deny_commands
    assert guardrails.protected_paths == Guardrails().protected_paths
