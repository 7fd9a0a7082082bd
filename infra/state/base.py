"""The contract every resource kind fulfils, and the models a change is made of."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import json
import pkgutil
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

from deepdiff import DeepDiff
from pydantic import BaseModel, Field, PrivateAttr

from infra.state.blobs import BlobStore, BlobTooLarge, LargeContent

Action = Literal["added", "removed", "modified"]
# The guest directory probes stage files in (uploads, scratch); removed after each capture.
STAGING = "/run/fluid-state"
# The most of one blob a kind reads whole to show or parse (config files; larger ones are
# never loaded into memory).
BLOB_READ_MAX = 8 << 20
# A watching kind's output starts with the stat lines of what it watches, between WATCH and
# WATCHED; a probe that finds the previous output's lines prints UNCHANGED instead of probing.
WATCH = "@@fluid-watch"
WATCHED = "@@fluid-watched"
UNCHANGED = "@@fluid-unchanged"
# Size, mtime, ctime and inode, then the path (last: it may hold spaces).
WATCH_FORMAT = "%s %.9Y %.9Z %i %n"


# Why a kind that owns a file leaves it out when its content was never kept (a capture keeps
# no private key material, whoever sent it).
CONTENT_NOT_KEPT = (
    "its content was not kept (private key material, or over the capture's content limit): "
    "not exported; provision it apart from the playbook"
)


class Change(BaseModel):
    """One resource that was added, removed or modified between two captures."""

    kind: str
    key: str
    action: Action
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    details: list[str] = Field(default_factory=list, description="human lines: mode 0644→0600")
    text_diff: str | None = None
    binary: bool = False
    exported: bool = True
    # Not exported, yet reproduced: an exported change brings it (a dependency of an installed
    # package). The replay must show it like any other change. A change neither exported nor
    # implied is an exclusion: the proof fails unless the run accepts it by name.
    implied: bool = False
    note: str | None = Field(default=None, description="why it is not exported, or a warning")

    def identity(self) -> tuple[str, str, str, str]:
        """What must match between an original change and its replay."""
        return (self.kind, self.key, self.action, canonical(self.after))

    def leave_out(self, reason: str) -> Change:
        """Mark this change not reproducible (not exported, brought by nothing), saying why."""
        self.exported, self.implied, self.note = False, False, reason
        return self

    def brought_by(self, reason: str) -> Change:
        """Mark this change not exported because an exported one brings it, saying which."""
        self.exported, self.implied, self.note = False, True, reason
        return self

    @property
    def excluded(self) -> bool:
        """Left out of the playbook and brought by nothing in it: no replay reproduces it."""
        return not self.exported and not self.implied

    def exclusion(self) -> str:
        """Why an excluded change is not reproducible, in the words every view uses."""
        reason = (self.note or "no reason was recorded").removeprefix("not exported: ")
        return f"not reproducible, because {reason}"


def canonical(value: Any) -> str:
    """A value as canonical JSON (sorted keys; a name that is not UTF-8 as its escape)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    return value.model_dump(mode="python") if isinstance(value, BaseModel) else str(value)


K = TypeVar("K", bound=Hashable)


def changed_keys(
    before: Mapping[K, Any],
    after: Mapping[K, Any],
    project: Callable[[Any], Any] | None = None,
    group: Callable[[K], Hashable] | None = None,
) -> list[K]:
    """The keys added, removed or changed from `before` to `after` (deepdiff), sorted.

    Each value is compared as the canonical JSON of `project(value)` (what the kind compares:
    a file's type, mode, owner, sha256…): deepdiff walking 9,000 nested entries takes ~0.9 s,
    one string per entry ~0.2 s. With `group` (a file's directory), deepdiff first compares
    each group as one string and then only the groups that differ, key by key: ~0.1 s. The
    verdict is the same either way (README, "Comparing captures").
    """
    project = project or (lambda v: v)
    if group is None:
        return sorted(
            _differing(
                {k: canonical(project(v)) for k, v in before.items()},
                {k: canonical(project(v)) for k, v in after.items()},
            )
        )
    old, new = _grouped(before, project, group), _grouped(after, project, group)
    found: set[K] = set()
    for g in _differing(
        {g: canonical(m) for g, m in old.items()}, {g: canonical(m) for g, m in new.items()}
    ):
        found |= _differing(
            {k: canonical(v) for k, v in old.get(g, {}).items()},
            {k: canonical(v) for k, v in new.get(g, {}).items()},
        )
    return sorted(found)  # type: ignore[type-var]


def _grouped(
    values: Mapping[K, Any], project: Callable[[Any], Any], group: Callable[[K], Hashable]
) -> dict[Hashable, dict[K, Any]]:
    """Each value's projection, by group (keys are strings: a group is one JSON object)."""
    out: dict[Hashable, dict[K, Any]] = {}
    for k, v in values.items():
        out.setdefault(group(k), {})[k] = project(v)
    return out


def _differing(before: dict[Any, str], after: dict[Any, str]) -> set[Any]:
    """The keys deepdiff reports added, removed or changed between two mappings of strings."""
    found = DeepDiff(
        before,
        after,
        view="tree",
        # Key by key always: by default two mappings with few keys in common are reported as
        # one changed value, which says nothing about which keys changed.
        threshold_to_diff_deeper=0,
    )
    return {level.path(output_format="list")[0] for levels in found.values() for level in levels}


class DiffContext(BaseModel):
    """Both whole captures, for kinds whose diff depends on another kind (path ownership)."""

    model_config = {"arbitrary_types_allowed": True}

    before: Capture
    after: Capture
    ignore: list[str] = Field(default_factory=list)
    blobs: BlobStore

    def blob(self, sha: str | None) -> bytes | None:
        """Captured content by sha256, to show or parse (None when it was not captured, or is
        larger than BLOB_READ_MAX: a large blob is never read whole; see BlobStore.size)."""
        try:
            return self.blobs.get(sha, limit=BLOB_READ_MAX)
        except BlobTooLarge:
            return None


class TaskBundle(BaseModel):
    """Ansible tasks and handlers one kind contributes; a copy task's `src` is a
    playbook_files.Content, which export names in the role's files/."""

    tasks: list[dict[str, Any]] = Field(default_factory=list)
    handlers: list[dict[str, Any]] = Field(default_factory=list)
    flagged: list[str] = Field(default_factory=list, description="tasks needing extra review")
    last: list[dict[str, Any]] = Field(
        default_factory=list, description="tasks that run after every kind's tasks"
    )


def watched_stat(output: str | None) -> str | None:
    """The stat lines a watching kind's output starts with (None when it has none)."""
    if not output or not output.startswith(WATCH + "\n"):
        return None
    lines, found, _rest = output.removeprefix(WATCH + "\n").partition(f"\n{WATCHED}")
    return lines if found else None


def unwatched(output: str) -> str:
    """A probe's output without its stat lines, as the kind's `parse` reads it."""
    if not output.startswith(WATCH + "\n"):
        return output
    return output.partition(f"\n{WATCHED}")[2].removeprefix("\n")


def unified_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    """A unified text diff; None content means the file did not exist on that side."""
    return "".join(
        difflib.unified_diff(
            (old or b"").decode(errors="replace").splitlines(True),
            (new or b"").decode(errors="replace").splitlines(True),
            fromfile=f"a{path}" if old is not None else "/dev/null",
            tofile=f"b{path}" if new is not None else "/dev/null",
        )
    )


class CarriesBlobs(BaseModel):
    """A kind's state that carries the file contents its probe sent until the capture takes
    them (they are stored apart, never kept in the state)."""

    _blobs: dict[str, bytes] = PrivateAttr(default_factory=dict)

    def carrying(self, blobs: dict[str, bytes]) -> Self:
        """This state, carrying `blobs` (sha256 → bytes)."""
        self._blobs = blobs
        return self

    def take_blobs(self) -> dict[str, bytes]:
        """The carried contents, removed from the state."""
        blobs, self._blobs = self._blobs, {}
        return blobs


S = TypeVar("S", bound=BaseModel)


class ResourceKind(ABC, Generic[S]):
    """One kind of guest resource: its probe, its state model, its diff and its Ansible."""

    name: ClassVar[str]
    # Export order: packages → groups → users → files → cron and sysctl → services.
    order: ClassVar[int]
    state_model: ClassVar[type[BaseModel]]

    # Paths this kind owns, so the files kind leaves them alone.
    owned_globs: ClassVar[tuple[str, ...]] = ()
    # A kind that remembers finds its previous (completed) output for the same sandbox in
    # params["previous"][name] (None at first), so its probe may report only what changed.
    remembers: ClassVar[bool] = False
    # Shell globs of every path a kind's probe reads. When the stat data of all of them (size,
    # mtime, ctime, inode: the same key the files hash index trusts) is what the previous
    # capture saw, the probe is skipped and its previous output reused. Implies remembering.
    watches: ClassVar[tuple[str, ...]] = ()
    # Whether a warm slot's preparation takes the kind's output (through the guest agent) as
    # the base of its sandboxes' first captures.
    remembered_at_boot: ClassVar[bool] = True

    def uploads(self, params: dict[str, Any]) -> dict[str, bytes]:
        """Files to put in the guest before the probe runs (remote path → bytes)."""
        return {}

    def take_blobs(self, state: S) -> dict[str, bytes]:
        """File contents the probe sent along, removed from the state (sha256 → bytes)."""
        return state.take_blobs() if isinstance(state, CarriesBlobs) else {}

    def take_large(self, state: S) -> list[LargeContent]:
        """Files the probe hashed whose content the host streams in (too large to travel
        inline), removed from the state."""
        return []

    @abstractmethod
    def probe(self, params: dict[str, Any]) -> str:
        """A POSIX shell snippet run as root in the guest; its stdout goes to `parse`."""

    def complete(self, output: str, previous: str | None) -> str:
        """The whole output, from this probe's `output` and the previous whole one."""
        return output

    def remembered(self) -> bool:
        """Whether captures keep this kind's output for the sandbox's next capture."""
        return self.remembers or bool(self.watches)

    def script(self, params: dict[str, Any]) -> str:
        """The probe, behind a check of the watched paths when the kind watches any.

        Needs `watch_script`'s output in $watched (the stat lines of every kind's paths): its
        own lines are picked out with shell builtins, so a capture runs one `stat` in all.
        """
        if not self.watches:
            return self.probe(params)
        seen = watched_stat((params.get("previous") or {}).get(self.name))
        check = "false" if seen is None else f'[ "$seen" = {shlex.quote(seen)} ]'
        # `set -f`: the lines split on newlines only, never globbed; case patterns still match.
        return (
            "seen=; IFS='\n'; set -f\n"
            "for l in $watched; do\n"
            f'  case "${{l#* * * * }}" in {"|".join(self.watches)}) seen="$seen$l\n"; esac\n'
            "done\n"
            "unset IFS; set +f\n"
            f"if {check}; then echo {UNCHANGED}; else\n"
            f"printf '%s\\n' {WATCH} \"$seen\" {WATCHED}\n{self.probe(params)}\nfi"
        )

    def memory_name(self) -> str:
        """File name of a remembered output; it changes with the kind's code."""
        return f"{self.name}-{_code_tag(type(self))}.out"

    def standalone_probe(self) -> str:
        """The probe with nothing remembered, as one script that makes and removes STAGING
        (for a kind without uploads)."""
        return f"mkdir -p {STAGING}\n{watch_script([self])}\n{self.script({})}\nrm -rf {STAGING}"

    @abstractmethod
    def parse(self, output: str) -> S:
        """Turn the probe's output into this kind's state."""

    @abstractmethod
    def diff(self, before: S, after: S, ctx: DiffContext) -> list[Change]:
        """The changes from `before` to `after`, noise and other kinds' paths left out."""

    @abstractmethod
    def export(self, changes: list[Change], ctx: ExportContext) -> TaskBundle:
        """Ansible tasks (ansible.builtin only) that reproduce the exported changes.

        Every string that came from the guest (and any task name or notify built from one) is
        wrapped with infra.state.playbook_yaml.unsafe, so Ansible never templates it.
        """


def watch_script(watching: list[ResourceKind]) -> str:
    """One `stat` of every path the kinds watch, into $watched (each process costs ~30 ms on
    TCG); each kind's `script` picks out its own lines."""
    paths = " ".join(dict.fromkeys(glob for k in watching for glob in k.watches))
    return f"watched=$(stat -L -c '{WATCH_FORMAT}' {paths} 2>/dev/null)" if paths else "watched="


class ExportContext(BaseModel):
    """What an export needs besides the changes: the whole change set."""

    changeset: ChangeSet

    def services_with_config(self) -> dict[str, tuple[str, ...]]:
        """Services running after the change, with the config trees that restart them."""
        out: dict[str, tuple[str, ...]] = {}
        for c in self.changeset.of("services"):
            state = c.after or {}
            if state.get("active") == "active" and c.key.endswith(".service"):
                name = c.key.removesuffix(".service")
                out[name] = (f"/etc/{name}/",)
        return out


class Capture(BaseModel):
    """A whole guest state at one moment: one entry per resource kind."""

    sandbox_id: str | None = None
    checkpoint: str | None = None
    image: str | None = None
    taken_at: datetime
    duration_s: float = 0.0
    reused: list[str] = Field(
        default_factory=list,
        description="kinds not probed again: nothing they watch changed since the last capture",
    )
    kinds: dict[str, Any]

    def state(self, kind: str) -> Any:
        """The typed state of one kind."""
        k = kinds()[kind]
        value = self.kinds[kind]
        return value if isinstance(value, k.state_model) else k.state_model.model_validate(value)


class ChangeSet(BaseModel):
    """Everything that changed between two captures, per kind, in export order."""

    sandbox_id: str | None = None
    image: str | None = None
    from_checkpoint: str | None = None
    to_checkpoint: str | None = None
    changes: list[Change] = Field(default_factory=list)

    def of(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def empty(self) -> bool:
        return not self.changes


@cache
def _code_tag(kind: type) -> str:
    # Read once per process: captures ask for it on every run.
    return hashlib.sha256(Path(inspect.getfile(kind)).read_bytes()).hexdigest()[:12]


@cache
def kinds() -> dict[str, ResourceKind]:
    """Every resource kind in infra/state/kinds, in export order (a new kind is a new file)."""
    from infra.state import kinds as package

    found: list[ResourceKind] = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, ResourceKind)
                and obj is not ResourceKind
                and obj.__module__ == module.__name__
            ):
                found.append(obj())
    return {k.name: k for k in sorted(found, key=lambda k: k.order)}


DiffContext.model_rebuild()
ExportContext.model_rebuild()
