"""Mode, owner, group and link target of paths whose content another kind owns.

The cron kind writes a cron.d file with the cron module, users write authorized_keys with
their own tasks: those modules set content, not always the metadata. So the files kind
reports the metadata of such a path itself, once: a chmod on /etc/crontab, or a new cron.d
file made 0600, which the owning kind's module would create 0644. Its task runs after every
kind's tasks, when the path exists. Kinds that keep a path's metadata themselves say so with
`metadata_globs`.
"""

from __future__ import annotations

from typing import Any, Protocol

from infra.state.base import Change, kinds
from infra.state.playbook_yaml import task_name, unsafe

# What a module creates a path with when told nothing else (root's umask 022): a new owned
# path like this needs no task of its own.
DEFAULT_MODES = {"file": 0o644, "directory": 0o755}
ONLY = "metadata only: its content is another kind's"


class Entry(Protocol):
    """The fields of a captured filesystem entry this module reads."""

    type: str
    mode: int
    owner: str
    group: str
    target: str | None


def globs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Globs of paths other kinds own the content of, and of those whose mode, owner and
    group they keep too (`metadata_globs`)."""
    owned: list[str] = []
    kept: list[str] = []
    for k in kinds().values():
        owned.extend(getattr(k, "owned_globs", ()))
        kept.extend(getattr(k, "metadata_globs", ()))
    return tuple(owned), tuple(kept)


def of(e: Entry) -> dict[str, Any]:
    """What is compared of a path whose content another kind owns."""
    return {"type": e.type, "mode": e.mode, "owner": e.owner, "group": e.group, "target": e.target}


def is_default(e: Entry) -> bool:
    """A new path as a module creates it unasked (a link's metadata is its target's)."""
    return e.type == "symlink" or (
        DEFAULT_MODES.get(e.type) == e.mode and e.owner == "root" and e.group == "root"
    )


def is_metadata_only(c: Change) -> bool:
    """A change the files kind reports for a path whose content another kind owns."""
    return c.kind == "files" and ONLY in c.details


def change(path: str, b: Entry | None, a: Entry) -> Change:
    """The metadata change of an owned path: modified (b) or new with non-default metadata."""
    ch = Change(
        kind="files",
        key=path,
        action="added" if b is None else "modified",
        before=of(b) if b else None,
        after=of(a),
    )
    for field in ("type", "mode", "owner", "group") if b else ("mode", "owner", "group"):
        old, new = (getattr(b, field) if b else None), getattr(a, field)
        if old != new:
            shown = [f"{v:04o}" if field == "mode" and v is not None else v for v in (old, new)]
            ch.details.append(f"{field} {shown[0]} → {shown[1]}" if b else f"{field} {shown[1]}")
    if b and b.target != a.target:
        ch.details.append(f"symlink target {b.target} → {a.target}")
    ch.details.append(ONLY)
    return ch


def task(c: Change) -> dict[str, Any]:
    """The `file` task that sets an owned path's metadata (run after every kind's tasks)."""
    a = c.after or {}
    # Paths, targets, owners and groups are the guest's: tagged !unsafe; modes are numbers.
    args: dict[str, Any] = {"path": unsafe(c.key), "follow": False}
    if a["type"] == "symlink":
        args |= {"src": unsafe(a["target"]), "state": "link", "force": True}
    else:
        args |= {"state": "directory" if a["type"] == "directory" else "file"}
        args["mode"] = f"{a['mode']:04o}"
    args |= {"owner": unsafe(a["owner"]), "group": unsafe(a["group"])}
    name = task_name(f"Set the mode and owner of {c.key}")
    return {"name": name, "ansible.builtin.file": args}
