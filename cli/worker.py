"""`fluid worker`: the Prefect worker of one hypervisor host, on that host's own work queue.

Calls orchestration.control_plane and orchestration.cluster_ca (lazily, inside the command
that needs them, so `fluid --help` stays fast).
"""

from __future__ import annotations

import argparse
import os

from cli.args import add_command, add_noun
from cli.output import emit_line, log


def cmd_worker_start(args: argparse.Namespace) -> int:
    """Register the host and start its worker (and, with no PREFECT_API_URL, the local server)."""
    from infra.host.identity import check, host_id
    from infra.records.hosts import work_queue
    from infra.settings import get_settings
    from orchestration import control_plane

    settings = get_settings()
    host = check(args.host or host_id(settings))
    cp = control_plane.from_environment()
    if cp is None:
        # No shared server named: fluid's local one, with the pool and deployments.
        cp = control_plane.start_server(settings, log)
        control_plane.deploy(settings, log)
    os.environ.update(cp.client_env())
    from orchestration import cluster_ca

    # Before the worker: the runs it takes sign with the cluster's CA from their first step.
    cluster_ca.join(settings)
    pid = control_plane.start_worker(settings, log, host=host, cp=cp)
    _pid_file, worker_log = control_plane.worker_files(settings, host)
    emit_line(
        args,
        {"host": host, "work_queue": work_queue(host), "pid": pid, "log": str(worker_log)},
        f"worker of host {host} running (pid {pid}) on queue {work_queue(host)}; log: {worker_log}",
    )
    return 0


def cmd_worker_stop(args: argparse.Namespace) -> int:
    """Stop the host's worker; its runs waiting for approval stay suspended."""
    from infra.host.identity import check, host_id
    from infra.settings import get_settings
    from orchestration import control_plane

    settings = get_settings()
    host = check(args.host or host_id(settings))
    stopped = control_plane.stop_worker(settings, log, host=host)
    emit_line(
        args,
        {"host": host, "stopped": stopped},
        f"worker of host {host} " + ("stopped" if stopped else "was not running"),
    )
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid worker start|stop [--host ID]`."""
    worker = add_noun(
        top,
        "worker",
        "this hypervisor host's Prefect worker",
        examples=("fluid worker start", "fluid worker start --host hv-2", "fluid worker stop"),
    )
    for name, fn, help in (
        ("start", cmd_worker_start, "register the host and start its worker on its own queue"),
        ("stop", cmd_worker_stop, "stop the host's worker"),
    ):
        sp = add_command(worker, name, fn, help)
        sp.add_argument(
            "--host", default=None, help="host id (default: FLUID_HOST_ID or this host's kept id)"
        )
