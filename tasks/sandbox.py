"""The Prefect task that destroys a sandbox: logged, retried only when a retry can help.

It neither caches nor persists its result: a cached "destroy" would skip real work, and its
parameters may include FluidSettings, whose CA key must not end up in a cache key or on disk.
"""

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.runtime import task_run as current_task_run
from prefect.states import State
from prefect.tasks import Task

from infra.errors import CheckpointNotFound, InvalidName, SandboxNotFound, SandboxNotRunning
from infra.machines import sandboxes
from infra.settings import FluidSettings

# Errors that say the same thing however often the call is repeated.
_PERMANENT = (InvalidName, SandboxNotFound, CheckpointNotFound, SandboxNotRunning)


def _worth_retrying(_task: Task[..., Any], _task_run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: transient failures only, so a wrong id fails at once."""
    # The engine wraps a raised exception in a Failed state whose data is the exception.
    return not isinstance(state.data, _PERMANENT)


@task(
    task_run_name="destroy {sandbox_id}",
    retries=3,
    retry_delay_seconds=2,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def destroy_sandbox(sandbox_id: str, settings: FluidSettings | None = None) -> None:
    """Destroy a sandbox and everything it left behind; SandboxNotFound if there was none."""
    logger = get_run_logger()
    try:
        sandboxes.destroy(sandbox_id, settings)
    except SandboxNotFound:
        # An earlier attempt of this run may have removed everything before it failed.
        if current_task_run.run_count > 1:
            logger.info("sandbox %s is already gone (removed by an earlier attempt)", sandbox_id)
            return
        raise
    logger.info("sandbox %s destroyed", sandbox_id)
