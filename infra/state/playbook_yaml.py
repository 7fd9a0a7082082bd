"""Playbook YAML in which everything a guest wrote stays literal: tagged `!unsafe`.

Ansible templates every string of a play on the controller (task names, module arguments,
notify entries, handler names), also under --check; a guest that names a file
`{{ lookup('pipe', …) }}` would run a command there. A scalar tagged `!unsafe` is never
templated. Kinds wrap each guest-derived string in `Unsafe` (with `unsafe` and `unsafe_each`);
`dump` tags those (a value Ansible would read as a number or boolean even when tagged is quoted
instead: it holds no template syntax) and nothing else, so fluid's own values (modules, states,
modes, files/ names) stay plain and the playbook reads like one written by hand. Task and
handler names are the exception: plain, with every Jinja opener split (`task_name`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from infra.errors import FluidError
from infra.state.base import Change

# A sha256 fluid validated: what captured contents are filed under.
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
    """A sha256 that names captured content, refused unless 64 lowercase hex digits."""
    if not isinstance(sha, str) or not SHA256.fullmatch(sha):
        shown = repr(sha)[:80]
        raise PlaybookYAMLError(
            f"refusing content named by {shown}: not a sha256 (64 lowercase hex digits)"
        )
    return sha


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Lists indented under their key, as yamllint (and so ansible-lint) expects.
        super().increase_indent(flow, False)


class _Loader(yaml.SafeLoader):
    pass


# Jinja's default openers; a task name never holds one (see task_name).
JINJA_OPENER = re.compile(r"\{(?=[{%#])")
# What ansible-lint skips on a task whose guest values (all `!unsafe`, never templated) look
# like templates: it reads them as templates it cannot parse or would space differently.
GUEST_TEMPLATE_NOQA = "# noqa: jinja[invalid] jinja[spacing]"
# yamllint's (and so ansible-lint's) longest line. A guest string is never folded (one line
# each), so a longer line is a guest's: the comment before it exempts that line alone.
LINE_MAX = 160
LONG_LINE = "# yamllint disable-line rule:line-length"
# Characters of a task name; the guest string it shows stays whole in the arguments.
NAME_MAX = 200


def task_name(text: str) -> str:
    """A task or handler name: `text` (fluid's verb and the guest's words) made inert.

    Names stay plain, not `!unsafe`: ansible-lint matches its `# noqa` comments to tasks by
    name and cannot compare a tagged one. So what would make a name a template is taken
    out: each Jinja opener (`{{`, `{%`, `{#`) is split by a space and anything not printable
    shown as its escape. The exact guest string is in the task's arguments, tagged.
    """
    shown = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode()
        for ch in text
    )
    shown = JINJA_OPENER.sub("{ ", shown)
    return shown if len(shown) <= NAME_MAX else shown[: NAME_MAX - 1] + "…"


def holds_template(value: object) -> bool:
    """True when a guest string in `value` (a task) holds a Jinja opener."""
    return any(isinstance(s, Unsafe) and JINJA_OPENER.search(s) for s in _strings(value))


def removal_task(path: str) -> dict[str, Any]:
    """The task that removes the guest's file or directory `path`."""
    return {
        "name": task_name(f"Remove {path}"),
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


def dump_tasks(tasks: list[dict[str, Any]], notes: list[str | None]) -> str:
    """YAML for a task or handler list, each task after its note (YAML comment lines of
    fluid's words, or None); a task holding guest strings that look like templates carries
    GUEST_TEMPLATE_NOQA on its first line. Refused unless it reads back as `tasks`."""
    text = ""
    for task, note in zip(tasks, notes, strict=True):
        for line in note.split("\n") if note else []:
            text += f"# {comment_text(line)}\n"
        first, _, rest = _dump([task]).partition("\n")
        if holds_template(task):
            first += f"  {GUEST_TEMPLATE_NOQA}"
        text += exempt_long_lines(f"{first}\n{rest}")
    if not _same(load(text or "[]"), tasks):
        raise PlaybookYAMLError("the playbook YAML does not read back as written; not exported")
    return text or "[]\n"


def exempt_long_lines(text: str) -> str:
    """`text` (YAML whose every line ends outside a scalar) with LONG_LINE before each line
    longer than LINE_MAX, indented as that line is."""
    out = ""
    # Split on newlines only: a scalar may hold other line separators, escaped or not.
    for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
        if len(line) > LINE_MAX:
            out += line[: len(line) - len(line.lstrip(" "))] + LONG_LINE + "\n"
        out += line + "\n"
    return out


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
