#!/usr/bin/env python3
"""Benchmark one agent-task flow run and print where its time goes, as a markdown table.

Run from the repository root, as root, when no other VM work is using the CPU:

    .venv/bin/python scripts/bench_flow.py [--runs N] [--steps FILE]

It uses a fresh FLUID_HOME in a temporary directory with its own local Prefect server,
worker and deployments on a free port (the storage dir, and so the golden image, is the
configured one), creates a production VM `bench`, and runs the agent-task deployment with
auto-approval N times (default 1) with the scripted agent's steps (default
examples/hello-nginx.yaml, the demo's task). Everything is removed afterwards, also on
errors and Ctrl-C: the production VM, the server and worker, the temporary directory.

Rows (seconds; wall clock from Prefect's own state timestamps of the flow and task runs):

- submit -> flow running: from `run_deployment` until the run is Running (worker pick-up,
  process start, Prefect import).
- task <name>: each task of the flow (prepare sandbox = create + checkpoint "before"; agent =
  the agent's work plus checkpoint "after"; diff; export; prove = replay on a fresh sandbox;
  preview = check mode on production; apply; destroy).
- agent's own commands: the summed durations of the commands the agent ran in the sandbox
  (from fluid's command records): the work a person at a shell would also have waited for.
- flow total: Running -> Completed of the flow run.
- fluid's overhead around the agent: flow total minus the agent's own commands.

The exit status is non-zero when a run does not end Completed with the change applied.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from bench.results import BenchError, Results, log  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--steps", default=str(REPO / "examples" / "hello-nginx.yaml"))
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="fluid-bench-flow-"))
    os.environ["FLUID_HOME"] = str(home)
    os.environ["FLUID_PREFECT_PORT"] = str(_free_port())
    os.environ.pop("PREFECT_API_URL", None)

    from infra.agents.scripted import load_steps
    from infra.machines import production, sandboxes, spares, warm_slots
    from infra.records import runs
    from infra.settings import FluidSettings
    from orchestration import control_plane

    settings = FluidSettings()
    results = Results()
    failures: list[str] = []
    try:
        control_plane.use_prefect(settings, progress=log)
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.deployments import run_deployment

        from blocks.production_target import ProductionTarget

        vm = results.timed(
            "production VM create (setup)", "s", lambda: production.create("bench", progress=log)
        )
        ProductionTarget.for_vm(vm).save("bench", overwrite=True)
        steps = [s.model_dump(exclude_defaults=True) for s in load_steps(Path(args.steps))]
        for n in range(args.runs):
            t0 = time.time()
            fr = run_deployment(
                "agent-task/agent-task",
                parameters={
                    "task": f"bench run {n + 1}",
                    "production": "bench",
                    "agent": {"kind": "scripted", "steps": steps},
                    "auto_approve": True,
                },
                timeout=0,
            )
            log(f"run {n + 1}: {fr.id}")
            with get_client(sync_client=True) as client:
                while True:
                    fr = client.read_flow_run(fr.id)
                    if fr.state and fr.state.is_final():
                        break
                    time.sleep(2)
                rec = runs.get(str(fr.id), settings)
                if not fr.state.is_completed() or rec is None or rec.status != "applied":
                    failures.append(f"run {fr.id} ended {fr.state.name}: {fr.state.message}")
                    continue
                if fr.start_time is None or fr.end_time is None:
                    raise BenchError(f"run {fr.id} has no start or end time")
                results.add("submit -> flow running", fr.start_time.timestamp() - t0, "s")
                task_runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id]))
                )
                for tr in sorted(task_runs, key=lambda t: t.start_time or fr.start_time):
                    if tr.start_time and tr.end_time:
                        # Default task run names end in a random "-xyz"; one row per task.
                        name = re.sub(r"-[0-9a-f]{3}$", "", tr.name)
                        results.add(
                            f"task {name}", (tr.end_time - tr.start_time).total_seconds(), "s"
                        )
                agent_s = sum(
                    (c.ended_at - c.started_at).total_seconds()
                    for c in sandboxes.commands(rec.sandbox_id or "", settings)
                    if c.actor.startswith("agent:")
                )
                total = (fr.end_time - fr.start_time).total_seconds()
                results.add("agent's own commands", agent_s, "s")
                results.add("flow total", total, "s")
                results.add("fluid's overhead around the agent", total - agent_s, "s")
    except BenchError as e:
        failures.append(str(e))
    finally:
        try:
            production.destroy("bench", settings)
        except Exception as e:  # report and go on cleaning up
            failures.append(f"could not destroy production VM bench: {e}")
        control_plane.stop(settings)
        try:  # the runs' spare (default settings) and warm slots live outside the temp home
            spares.clear(settings)
            warm_slots.clear(settings)
        except Exception as e:
            failures.append(f"could not stop the spares or clear the warm slots: {e}")
        shutil.rmtree(home, ignore_errors=True)

    print(f"\nagent-task flow, {args.runs} run(s), steps {args.steps}, nproc {os.cpu_count()}\n")
    print(results.table())
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
