"""Prefect tasks over infra's sandboxes and checkpoints: thin, logged, retried only when safe.

No task caches or persists its result: a cached "create" or "exec" would skip real work, and
the parameters include FluidSettings, whose CA key must not end up in a cache key or on disk.
"""

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.runtime import task_run as current_task_run
from prefect.states import State
from prefect.tasks import Task

from infra.errors import CheckpointNotFound, InvalidName, SandboxNotFound, SandboxNotRunning
from infra.machines import checkpoints, sandboxes
from infra.machines.checkpoints import Checkpoint
from infra.machines.sandboxes import Sandbox
from infra.settings import FluidSettings
from infra.transport.command_output import CommandResult

# How much of a command's output goes to the Prefect log; the full result is returned.
LOG_OUTPUT_LINES = 10
LOG_COMMAND_CHARS = 300

# Errors that say the same thing however often the call is repeated.
_PERMANENT = (InvalidName, SandboxNotFound, CheckpointNotFound, SandboxNotRunning)


def _worth_retrying(_task: Task[..., Any], _task_run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: transient failures only, so a wrong id fails at once."""
    # The engine wraps a raised exception in a Failed state whose data is the exception.
    return not isinstance(state.data, _PERMANENT)


def _create_run_name(parameters: dict[str, Any]) -> str:
    return f"create {parameters.get('name') or 'sandbox'}"


def _fork_run_name(parameters: dict[str, Any]) -> str:
    target = parameters.get("name") or "new sandbox"
    return f"fork {parameters['sandbox_id']}@{parameters['checkpoint']} -> {target}"


def _head(text: str, lines: int = LOG_OUTPUT_LINES) -> str:
    kept = text.splitlines()
    shown = "\n".join(kept[:lines])
    if len(kept) > lines:
        shown += f"\n[... {len(kept) - lines} more lines]"
    return shown


def _short(command: str) -> str:
    if len(command) <= LOG_COMMAND_CHARS:
        return command
    return command[: LOG_COMMAND_CHARS - 3] + "..."


# No retries: infra.machines.sandboxes.create already tears down on failure, and a retry after a
# failure that happened past the point of no return (e.g. a lost connection) could leak a VM.
@task(task_run_name=_create_run_name, cache_policy=NO_CACHE, persist_result=False)
def create_sandbox(
    name: str | None = None,
    image: str | None = None,
    network: str | None = None,
    agent_id: str | None = None,
    ttl_minutes: int | None = None,
    settings: FluidSettings | None = None,
    image_version: str | None = None,
) -> Sandbox:
    """Create a sandbox VM and wait until it answers SSH."""
    logger = get_run_logger()
    sandbox = sandboxes.create(
        name,
        image=image,
        image_version=image_version,
        network=network,
        agent_id=agent_id,
        ttl_minutes=ttl_minutes,
        progress=logger.info,
        settings=settings,
    )
    logger.info(
        "sandbox %s is %s (image %s %s, ssh 127.0.0.1:%d, expires %s)",
        sandbox.id,
        sandbox.state,
        sandbox.image,
        sandbox.image_version,
        sandbox.ssh_port,
        sandbox.expires_at.isoformat(timespec="seconds"),
    )
    return sandbox


# No retries: a command may have run (in part) before the failure, and commands are not
# idempotent in general.
@task(task_run_name="exec {sandbox_id}", cache_policy=NO_CACHE, persist_result=False)
def run_command(
    sandbox_id: str,
    command: str,
    timeout: float = 300.0,
    settings: FluidSettings | None = None,
) -> CommandResult:
    """Run a command as root in the sandbox; a non-zero exit status is returned, not raised."""
    logger = get_run_logger()
    logger.info("$ %s", _short(command))
    result = sandboxes.run(sandbox_id, command, timeout=timeout, settings=settings)
    log = logger.info if result.exit_status == 0 else logger.warning
    log("exit status %d after %.1f s", result.exit_status, result.duration_s)
    if result.stdout:
        logger.info("stdout:\n%s", _head(result.stdout_text))
    if result.stderr:
        logger.info("stderr:\n%s", _head(result.stderr_text))
    return result


# No retries: a retry after a snapshot that did get taken would fail with CheckpointExists.
@task(task_run_name="checkpoint {sandbox_id}@{name}", cache_policy=NO_CACHE, persist_result=False)
def checkpoint(sandbox_id: str, name: str, settings: FluidSettings | None = None) -> Checkpoint:
    """Checkpoint a running sandbox's disk and memory under `name`."""
    cp = checkpoints.create(sandbox_id, name, settings)
    get_run_logger().info("checkpoint %s of sandbox %s taken", name, sandbox_id)
    return cp


# Reverting to a snapshot is idempotent, so a transient failure is worth another try.
@task(
    task_run_name="restore {sandbox_id}@{name}",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def restore(sandbox_id: str, name: str, settings: FluidSettings | None = None) -> None:
    """Return a sandbox to checkpoint `name` (disk, memory, and then the clock)."""
    checkpoints.restore(sandbox_id, name, settings)
    get_run_logger().info("sandbox %s restored to checkpoint %s", sandbox_id, name)


# No retries: like create, a retry could leave a half-made fork behind.
@task(task_run_name=_fork_run_name, cache_policy=NO_CACHE, persist_result=False)
def fork(
    sandbox_id: str,
    checkpoint: str,
    name: str | None = None,
    settings: FluidSettings | None = None,
) -> Sandbox:
    """A new sandbox booted from the disk state of another sandbox's checkpoint."""
    logger = get_run_logger()
    sandbox = checkpoints.fork(
        sandbox_id, checkpoint, name, settings=settings, progress=logger.info
    )
    logger.info("sandbox %s forked from %s@%s", sandbox.id, sandbox_id, checkpoint)
    return sandbox


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
