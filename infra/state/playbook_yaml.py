"""Playbook YAML in which everything a guest wrote stays literal: tagged `!unsafe`.

Ansible templates every string of a play on the controller (task names, module arguments,
notify entries, handler names), also under --check; a guest that names a file
`{{ lookup('pipe', …) }}` would run a command there. A scalar tagged `!unsafe` is never
templated. Kinds wrap each guest-derived string in `Unsafe` (with `unsafe` and `unsafe_each`);
`dump` tags those (a value Ansible would read as a number or boolean even when tagged is quoted
instead: it holds no template syntax) and nothing else, so fluid's own values (modules, states,
modes, blob names) stay plain and the playbook reads like one written by hand."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from infra.errors import FluidError
from infra.state.base import Change

# The only file names fluid gives the contents it copies: a sha256 it validated.
SHA256 = re.compile(r"[0-9a-f]{64}")
# Wide enough that no scalar is ever folded over lines.
_WIDTH = 1 << 30
_STR = "tag:yaml.org,2002:str"
# YAML 1.1's implicit types, as PyYAML and so ansible-core resolve them.
_RESOLVER = yaml.resolver.Resolver()


class PlaybookYAMLError(FluidError):
    """A value cannot be written into a playbook faithfully."""


class Unsafe(str):
    """A string the guest wrote: emitted as `!unsafe`, so Ansible never templates it."""

    __slots__ = ()


def unsafe(value: str) -> Unsafe:
    """`value` marked as guest data."""
    return Unsafe(value)


def unsafe_each(values: Iterable[str]) -> list[Unsafe]:
    """Each element marked as guest data (`!unsafe` tags one scalar, never a whole list)."""
    return [Unsafe(v) for v in values]


def blob_name(sha: object) -> str:
    """The files/ name of captured content: its sha256, refused unless 64 lowercase hex."""
    if not isinstance(sha, str) or not SHA256.fullmatch(sha):
        shown = repr(sha)[:80]
        raise PlaybookYAMLError(
            f"refusing content named by {shown}: not a sha256 (64 lowercase hex digits)"
        )
    return sha


class _Dumper(yaml.SafeDumper):
    pass


class _Loader(yaml.SafeLoader):
    pass


def removal_task(path: str) -> dict[str, Any]:
    """The task that removes the guest's file or directory `path`."""
    return {
        "name": unsafe(f"remove {path}"),
        "ansible.builtin.file": {"path": unsafe(path), "state": "absent"},
    }


def _stays_str_untagged_only(value: str) -> bool:
    """True for a value `!unsafe` would not keep a string: ansible-core resolves a tagged
    scalar's type as if it were plain, so `!unsafe '0755'` is the int 493 and `!unsafe 'yes'`
    is True. Such a value (a number, boolean, null, date, `*`, `=`, `<<`) holds no template
    syntax, so a quoted plain string carries it as literally."""
    return _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) != _STR


def _represent_unsafe(dumper: yaml.SafeDumper, value: Unsafe) -> yaml.ScalarNode:
    if _stays_str_untagged_only(value):
        return dumper.represent_str(str(value))
    # Double quotes escape every character that is not printable (newlines, tabs, NEL, line
    # and paragraph separators): in single quotes YAML would fold or normalise them.
    style = "'" if value.isprintable() else '"'
    return dumper.represent_scalar("!unsafe", str(value), style=style)


def _construct_unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> Unsafe:
    # As ansible-core reads it: the tagged scalar's type resolved as if it were plain.
    if not isinstance(node, yaml.ScalarNode) or (
        loader.resolve(yaml.ScalarNode, node.value, (True, False)) != _STR
    ):
        raise yaml.constructor.ConstructorError(
            None, None, "Ansible would not read this !unsafe value as a string", node.start_mark
        )
    return Unsafe(loader.construct_scalar(node))


_Dumper.add_representer(Unsafe, _represent_unsafe)
_Loader.add_constructor("!unsafe", _construct_unsafe)


def _dump(data: object) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=_WIDTH, allow_unicode=True)


def load(text: str) -> Any:
    """A playbook file fluid wrote, `!unsafe` scalars read back as `Unsafe`."""
    return yaml.load(text, Loader=_Loader)


def dump(data: object) -> str:
    """YAML for a playbook file; refused unless it reads back exactly as `data`."""
    text = _dump(data)
    if not _same(load(text), data):
        raise PlaybookYAMLError("the playbook YAML does not read back as written; not exported")
    return text


def _same(a: object, b: object) -> bool:
    """`a` (as read back) equals `b`, and guest strings are still tagged where they need it."""
    if isinstance(b, Unsafe) and _stays_str_untagged_only(b):
        return type(a) is str and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def why_not_literal(value: str) -> str | None:
    """Why a guest string cannot reach the target byte for byte (None when it can)."""
    if value.isprintable():
        return None  # single-quoted, written as it is: nothing to fold or escape
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return "not valid UTF-8, which a playbook cannot carry byte for byte"
    try:
        back = load(_dump([Unsafe(value)]))
    except yaml.YAMLError:
        back = None
    if back != [value]:
        return "YAML does not carry it unchanged"
    return None


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def hold_back(change: Change) -> Change:
    """`change`, or a copy marked not exported when a string a playbook would carry (its key,
    its after state, or for a removal its before state) cannot be carried literally."""
    if not change.exported:
        return change
    state = change.after if change.after is not None else change.before
    for s in _strings([change.key, state]):
        why = why_not_literal(s)
        if why:
            return change.model_copy(update={"exported": False, "note": f"not exported: {why}"})
    return change


def comment_text(text: str) -> str:
    """`text` for a YAML comment: anything that is not printable (a newline would end the
    comment and start YAML of the guest's choosing) shown as an escape."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode()
        for ch in text
    )
