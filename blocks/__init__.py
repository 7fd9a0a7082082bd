"""blocks/: fluid's configuration stored on the Prefect server, and the loading of it. The
blocks a flow reads (ProductionTarget: the production hosts changes are applied to;
GuardrailsBlock: the agents' guardrails; LLMBlock: an LLM endpoint) and `loading`, which turns
the flow parameters that name them into live objects with an error saying how to make a
missing one. Host settings (libvirt, storage, image, the SSH CA) are not blocks: every fluid
process reads them from FLUID_* (infra/settings.py), so all agree. It may import prefect and
infra/; never orchestration, tasks, flows or cli.
"""

from blocks.guardrails import GuardrailsBlock
from blocks.llm import LLMBlock
from blocks.production_target import ProductionHost, ProductionTarget

__all__ = [
    "GuardrailsBlock",
    "LLMBlock",
    "ProductionHost",
    "ProductionTarget",
]
