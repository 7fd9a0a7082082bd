"""Deployments each host needs on its own work queue: its janitor, every 10 minutes.

A host's janitor sweeps that host's sandboxes (which only it can reach) and, on any host, acts
as the cluster janitor (flows/janitor.py). prefect.yaml's `janitor` deployment is the template;
`janitor-<host id>` is its copy on the host's queue, made when the host's worker starts. Over
plain HTTP, like the rest of the process management (no Prefect import).
"""

from __future__ import annotations

import json
import urllib.parse

from infra.errors import FluidError
from infra.records.hosts import work_queue
from orchestration.prefect_api import ControlPlane, api_call

TEMPLATE = "janitor/janitor"
SCHEDULE = {"cron": "*/10 * * * *", "timezone": "UTC"}
# What a copy keeps of the template; the rest (name, queue, schedule) is the host's.
KEPT = (
    "flow_id",
    "entrypoint",
    "path",
    "pull_steps",
    "parameters",
    "parameter_openapi_schema",
    "enforce_parameter_schema",
    "job_variables",
    "description",
    "tags",
    "work_pool_name",
)


class HostDeploymentError(FluidError):
    """A host's own deployments could not be made on the Prefect server."""


def janitor_name(host: str) -> str:
    """The deployment name of `host`'s janitor (flow `janitor`)."""
    return f"janitor-{host}"


def ensure_janitor(cp: ControlPlane, host: str) -> None:
    """Create or update `host`'s janitor deployment: the template's, on the host's queue."""
    flow, name = TEMPLATE.split("/")
    url = f"{cp.api_url}/deployments/name/{urllib.parse.quote(flow)}/{urllib.parse.quote(name)}"
    code, body = api_call(url, cp.auth_string)
    if code != 200:
        raise HostDeploymentError(
            f"no deployment {TEMPLATE} on {cp.api_url} (HTTP {code or 'no answer'}) to copy for "
            f"host {host}'s janitor: run `fluid server start`, or `prefect --no-prompt deploy "
            "--all` in the fluid checkout"
        )
    template = json.loads(body)
    copy = {k: template[k] for k in KEPT if k in template}
    copy |= {
        "name": janitor_name(host),
        "work_queue_name": work_queue(host),
        "schedules": [{"schedule": SCHEDULE, "active": True}],
    }
    # POST /deployments/ creates, or updates the one of that flow and name.
    code, _ = api_call(f"{cp.api_url}/deployments/", cp.auth_string, timeout=10, body=copy)
    if code not in (200, 201):
        raise HostDeploymentError(
            f"could not create deployment janitor/{janitor_name(host)} on {cp.api_url} "
            f"(HTTP {code or 'no answer'})"
        )
