"""The scripted agent: runs given steps (commands and file writes) in the sandbox.

Used by the demo and the tests. Each command sees FLUID_TASK, FLUID_ATTEMPT and
FLUID_FEEDBACK (the reviewer's comment on a rejected attempt) in its environment, so a
script can react to a review.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra import sandboxes
from infra.agents.base import AgentContext, AgentFailed, AgentReport, Progress
from infra.errors import FluidError
from infra.settings import FluidSettings


class StepsFileError(FluidError, ValueError):
    """A steps file is missing or not a list of steps."""


class Step(BaseModel):
    """One step: `run` a shell command as root, or `write` a file with `content`."""

    model_config = ConfigDict(extra="forbid")

    run: str | None = Field(default=None, description="Shell command, run as root.")
    write: str | None = Field(default=None, description="Absolute path of a file to write.")
    content: str = Field(default="", description="The file's content (with write).")
    mode: str = Field(default="0644", pattern=r"^0?[0-7]{3,4}$", description="File mode.")
    timeout: float = Field(default=600.0, gt=0, description="Seconds a command may take.")

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        if (self.run is None) == (self.write is None):
            raise ValueError("a step needs exactly one of `run` or `write`")
        if self.write is not None and not self.write.startswith("/"):
            raise ValueError(f"write needs an absolute path, got {self.write!r}")
        return self


class ScriptedAgentSpec(BaseModel):
    """Steps given inline or as a YAML file (a list of steps, or {steps: [...]})."""

    kind: str = Field(default="scripted", pattern="^scripted$")
    steps: list[Step] = Field(default_factory=list)
    steps_file: str | None = Field(
        default=None, description="YAML file with the steps, read where the flow runs."
    )

    def resolved_steps(self) -> list[Step]:
        """The inline steps followed by the file's; StepsFileError when neither gives any."""
        steps = list(self.steps)
        if self.steps_file:
            steps += load_steps(Path(self.steps_file))
        if not steps:
            raise StepsFileError("the scripted agent has no steps: give steps or steps_file")
        return steps


def load_steps(path: Path) -> list[Step]:
    """Steps from a YAML file, with a clear error for a missing or malformed file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise StepsFileError(f"cannot read steps file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise StepsFileError(f"steps file {path} is not valid YAML: {e}") from e
    if isinstance(data, dict):
        data = data.get("steps")
    if not isinstance(data, list):
        raise StepsFileError(f"steps file {path} must hold a list of steps (or steps: [...])")
    try:
        return [Step.model_validate(item) for item in data]
    except ValidationError as e:
        raise StepsFileError(f"steps file {path}: {e}") from e


class ScriptedAgent:
    """Runs its steps in order; a failing command ends the attempt with AgentFailed."""

    def __init__(self, spec: ScriptedAgentSpec) -> None:
        self.steps = spec.resolved_steps()

    def work(self, ctx: AgentContext, *, say: Progress, settings: FluidSettings) -> AgentReport:
        if ctx.feedback:
            say(f"reviewer feedback for attempt {ctx.attempt}: {ctx.feedback}")
        env = {
            "FLUID_TASK": ctx.task,
            "FLUID_ATTEMPT": str(ctx.attempt),
            "FLUID_FEEDBACK": ctx.feedback or "",
        }
        exports = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        for n, step in enumerate(self.steps, 1):
            if step.write is not None:
                say(f"step {n}: write {step.write}")
                self._write(ctx.sandbox_id, step, settings)
                continue
            say(f"step {n}: $ {step.run}")
            r = sandboxes.run(
                ctx.sandbox_id,
                f"{exports}\n{step.run}",
                timeout=step.timeout,
                actor="agent:scripted",
                settings=settings,
            )
            tail = (r.stdout_text + r.stderr_text).strip().splitlines()[-10:]
            if tail:
                say("\n".join(tail))
            if r.exit_status != 0:
                raise AgentFailed(
                    f"step {n} (`{step.run}`) exited {r.exit_status}:\n{r.stderr_text[-2000:]}"
                )
        return AgentReport(
            summary=f"ran {len(self.steps)} scripted step(s)", actions=len(self.steps)
        )

    @staticmethod
    def _write(sandbox_id: str, step: Step, settings: FluidSettings) -> None:
        assert step.write is not None
        with sandboxes.guest(sandbox_id, settings) as g:
            r = g.run(f"mkdir -p {shlex.quote(str(Path(step.write).parent))}", timeout=60)
            if r.exit_status != 0:
                raise AgentFailed(f"cannot create the folder of {step.write}: {r.stderr_text}")
            g.upload_bytes(step.content.encode(), step.write, mode=int(step.mode, 8))
