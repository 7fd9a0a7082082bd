"""The Prefect automation that tells reviewers a run waits for approval.

When FLUID_APPROVAL_NOTIFY names a notification block (TYPE-SLUG/NAME: a "Custom Webhook",
"Slack Webhook", "Email", ... block the user saved), `fluid server start` makes one automation
on the server: an agent-task flow run entering Paused (a direct call) or Suspended (a run of
the deployment) sends that block a notification with the run's name and UI address. Prefect's
server evaluates the trigger and sends it; no fluid process needs to be up. Without the
setting, fluid's automation is removed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infra.errors import FluidError
from infra.settings import FluidSettings, get_settings
from orchestration.prefect_api import ControlPlane

NAME = "fluid: agent-task run waits for approval"
FLOW = "agent-task"
WAITING_EVENTS = frozenset({"prefect.flow-run.Paused", "prefect.flow-run.Suspended"})
SUBJECT = "fluid: {{ flow_run.name }} waits for approval"
BODY = (
    "Flow run {{ flow_run.name }} ({{ flow_run.id }}) waits for a decision since "
    "{{ flow_run.state.timestamp }}.\n"
    "Review and approve or reject it: {{ flow_run|ui_url }}\n"
    "or: fluid approve {{ flow_run.id }} / fluid reject {{ flow_run.id }}"
)


class NotificationBlockMissing(FluidError):
    """FLUID_APPROVAL_NOTIFY names a block the Prefect server does not hold."""


def automation(block_document_id: Any):  # noqa: ANN201 - AutomationCore, imported lazily
    """fluid's approval automation, sending to the block document `block_document_id`."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=NAME,
        description="Notifies when an agent-task run waits for approval (made by fluid).",
        trigger=EventTrigger(
            expect=set(WAITING_EVENTS),
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW},
            posture=Posture.Reactive,
            threshold=1,
            within=0,
        ),
        actions=[SendNotification(block_document_id=block_document_id, subject=SUBJECT, body=BODY)],
    )


def configure(
    cp: ControlPlane, say: Callable[[str], None], settings: FluidSettings | None = None
) -> None:
    """Make (or update, or remove) fluid's approval automation on `cp` per the setting."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    ref = (settings or get_settings()).approval_notify
    auth = cp.auth_string.get_secret_value()
    with (
        temporary_settings({PREFECT_API_URL: cp.api_url, PREFECT_API_AUTH_STRING: auth}),
        get_client(sync_client=True) as client,
    ):
        existing = client.read_automations_by_name(NAME)
        wanted = None
        if ref is not None:
            slug, name = ref.split("/", 1)
            try:
                doc = client.read_block_document_by_name(name, slug, include_secrets=False)
            except ObjectNotFound as e:
                raise NotificationBlockMissing(
                    f"FLUID_APPROVAL_NOTIFY={ref}: no block {ref} on the Prefect server at "
                    f"{cp.api_url}; save one (README: 'Approval notifications') or unset it"
                ) from e
            wanted = automation(doc.id)
        kept = False
        for found in existing:
            if wanted is not None and not kept and _same(found, wanted):
                kept = True
                continue
            client.delete_automation(found.id)
        if wanted is not None and not kept:
            client.create_automation(wanted)
            say(f"approval notifications go to block {ref} (automation {NAME!r})")


def _same(found: Any, wanted: Any) -> bool:
    def key(a: Any) -> tuple:
        return (
            a.enabled,
            a.trigger.model_dump(mode="json", exclude={"id"}),
            [x.model_dump(mode="json") for x in a.actions],
        )

    return key(found) == key(wanted)
