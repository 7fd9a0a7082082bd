"""The scripted agent: runs given steps (commands and file writes) in the sandbox.

Used by the demo and the tests. Steps go through the same tools (and guardrails) as any
agent. Each command sees FLUID_TASK, FLUID_ATTEMPT and FLUID_FEEDBACK (the reviewer's
comment on a rejected attempt) in its environment, so a script can react to a review.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra.agents.base import AgentContext, AgentReport, Progress
from infra.agents.errors import AgentFailed
from infra.agents.yaml_files import read_yaml
from infra.errors import FluidError

if TYPE_CHECKING:
    from infra.agents.tools import Toolbox


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

    kind: Literal["scripted"] = "scripted"
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
    data = read_yaml(path, "steps file", StepsFileError)
    if isinstance(data, dict):
        data = data.get("steps")
    if not isinstance(data, list):
        raise StepsFileError(f"steps file {path} must hold a list of steps (or steps: [...])")
    try:
        return [Step.model_validate(item) for item in data]
    except ValidationError as e:
        raise StepsFileError(f"steps file {path}: {e}") from e


class ScriptedAgent:
    """Runs its steps in order through the tools; a failing step ends the attempt."""

    def __init__(self, spec: ScriptedAgentSpec) -> None:
        self.steps = spec.resolved_steps()

    def work(self, ctx: AgentContext, tools: Toolbox, *, say: Progress) -> AgentReport:
        if ctx.feedback:
            say(f"reviewer feedback for attempt {ctx.attempt}: {ctx.feedback}")
        for n, step in enumerate(self.steps, 1):
            if step.write is not None:
                r = tools.call(
                    "write_file", {"path": step.write, "content": step.content, "mode": step.mode}
                )
            else:
                r = tools.call("run_command", {"command": step.run, "timeout": step.timeout})
            if not r.ok or (r.exit_status or 0) != 0:
                what = f"`{step.run}`" if step.run is not None else f"write {step.write}"
                raise AgentFailed(f"step {n} ({what}) failed: {r.content[-2000:]}")
        tools.call("finish", {"summary": f"ran {len(self.steps)} scripted step(s)"})
        return AgentReport(
            summary=f"ran {len(self.steps)} scripted step(s)", actions=len(self.steps)
        )
