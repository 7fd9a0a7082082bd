"""Where captured contents go in a playbook's files/: under their target path, or by hash.

A reviewer reads `src: etc/nginx/nginx.conf`, not a sha256. The path is the guest's, so it
becomes a name in files/ only when that cannot go wrong anywhere: every component made of
letters, digits and `. _ + @ = , -` (no `..`, no `/` run, no space, quote, control character
or Jinja marker), short enough for any filesystem, and colliding with no other name even when
case is folded, nor being a directory of another. Anything else is stored as
`sha256/<its sha256>` (a directory no path-named file can use), and the task says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from infra.state.blobs import valid_sha
from infra.state.playbook_yaml import blob_name

# Components a path-named file may have: no shell, YAML, Jinja or path syntax in any of them.
COMPONENT = re.compile(r"[A-Za-z0-9_.+@=,-]{1,255}")
# The longest name kept under files/ (PATH_MAX is 4096 with the playbook's own directory).
MAX_NAME = 1024
# Where contents stored by their hash go; a guest path under it is stored by its hash too.
BY_HASH = "sha256"


@dataclass(frozen=True)
class Content:
    """Captured content a task copies to `dest` (a guest path): export picks its files/ name."""

    dest: str
    sha256: str


@dataclass(frozen=True)
class Stored:
    """A content's name under files/, and why it is not its path (None when it is)."""

    name: str
    fallback: str | None = None


def content(dest: str, sha256: object) -> Content:
    """The `src` of a copy task: `sha256` (validated) to be written as the guest's `dest`."""
    return Content(dest=dest, sha256=blob_name(sha256))


def own_name(dest: str) -> tuple[str | None, str | None]:
    """`dest` as a files/ name, or None and why it cannot be one."""
    if not dest.startswith("/"):
        return None, "the path is not absolute"
    rel = dest[1:]
    if len(rel) > MAX_NAME:
        return None, f"the path is longer than {MAX_NAME} characters"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None, "the path has an empty, '.' or '..' component"
    if not all(COMPONENT.fullmatch(p) for p in parts):
        return None, "the path holds characters other than letters, digits and . _ + @ = , -"
    if parts[0].casefold() == BY_HASH:
        return None, f"the path is under /{BY_HASH}, where files/ keeps contents by their hash"
    return rel, None


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def layout(contents: Iterable[Content]) -> dict[Content, Stored]:
    """A files/ name for each content: its path where that is safe and unique, else its hash.

    Names are compared case-folded (a checkout on a case-insensitive filesystem must not merge
    two), and a name may not be a directory of another: in path order, the first keeps its
    name and a later one that would collide is stored by its hash.
    """
    files: set[str] = set()
    dirs: set[str] = set()
    out: dict[Content, Stored] = {}
    for c in sorted(set(contents), key=lambda c: (c.dest, c.sha256)):
        name, why = own_name(c.dest)
        if name is not None:
            folded = name.casefold()
            parents = _parents(folded)
            if folded in files or folded in dirs or any(p in files for p in parents):
                name, why = None, "its name collides with another file's in files/"
            else:
                files.add(folded)
                dirs.update(parents)
        out[c] = Stored(name=name) if name else Stored(f"{BY_HASH}/{c.sha256}", why)
    return out


def is_hash_name(name: str) -> bool:
    """True for a files/ name layout gives content stored by its hash."""
    prefix, _, sha = name.partition("/")
    return prefix == BY_HASH and valid_sha(sha)
