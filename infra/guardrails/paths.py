"""Absolute paths as the guardrails compare them: normalised lexically (the guest's file system
is never consulted here), matched as fnmatch globs, whole component by whole component."""

from __future__ import annotations

import glob
import posixpath
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import AfterValidator


def normpath(path: str) -> str:
    """Lexically normalise an absolute path: `..` stops at /, and // or /./ collapse."""
    # normpath keeps exactly two leading slashes (POSIX leaves them implementation-defined).
    return posixpath.normpath("/" + path.lstrip("/"))


def _absolute(path: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f"{path!r} must be an absolute path (starting with /)")
    return normpath(path)


AbsolutePath = Annotated[str, AfterValidator(_absolute)]
"""An absolute path (globs allowed), normalised when the model is built."""


def _ancestors(path: str) -> Iterator[str]:
    """`path`, its parent, and so on up to / (path must be absolute)."""
    while True:
        yield path
        if path == "/":
            return
        path = posixpath.dirname(path)


def under(path: str, entry: str) -> bool:
    """Whether `path` is `entry` or below it, comparing whole components (entry may be a glob)."""
    return any(fnmatchcase(candidate, entry) for candidate in _ancestors(path))


def may_write(target: str, protected: str, tree: bool) -> bool:
    """Whether writing `target` (a path, or a glob as typed) may write `protected` (a path or
    glob) or anything under it; with `tree`, everything under `target` is written too."""
    if under(target, protected) or fnmatchcase(protected, target):
        return True
    if not tree:
        return False
    # rm -r, mv and chmod -R of a directory above a protected file reach the file too.
    literal = protected
    if glob.has_magic(protected):
        literal = posixpath.dirname(re.split(r"[*?\[]", protected, maxsplit=1)[0] + "x")
    return any(fnmatchcase(ancestor, target) for ancestor in _ancestors(literal))
