"""What one simple command's words say: its program, flags, operands and option values, and
the files it would change. Words are read as GNU tools read them, conservatively: a doubt adds
a candidate, never hides one."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from infra.guardrails.paths import normpath


def program_name(word: str) -> str:
    """The program a command word names: its basename (`/usr/bin/rm` is `rm`)."""
    return posixpath.basename(word) or word


def flags_in(args: Sequence[str]) -> set[str]:
    """Flags set in `args`: -rf gives r and f, --recursive[=x] gives recursive; stops at --."""
    found: set[str] = set()
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("--"):
            found.add(arg[2:].split("=", 1)[0])
        elif arg.startswith("-") and len(arg) > 1:
            found.update(arg[1:])
    return found


def operands(args: Sequence[str]) -> list[str]:
    """Words that are not options (everything after --); option values are kept, which is
    harmless: they only ever add candidate targets."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i + 1 :])
        if not (arg.startswith("-") and len(arg) > 1):
            out.append(arg)
    return out


def option_value(
    args: Sequence[str], short: str, long: str, *, stop_at_double_dash: bool
) -> str | None:
    """The value given to option `short` or `long` (-tDIR, -t DIR, --long=DIR, --long DIR), or
    None. With `stop_at_double_dash`, words after `--` are operands, not options."""
    for i, arg in enumerate(args):
        if arg == "--" and stop_at_double_dash:
            break
        if arg in (short, long) and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
        if arg.startswith(short) and not arg.startswith("--") and len(arg) > len(short):
            return arg[len(short) :]
    return None


_REMOVERS = {"rm", "unlink", "shred", "truncate", "tee"}
_MODE_CHANGERS = {"chmod", "chown", "chgrp", "chattr", "setfacl"}
_COPIERS = {"cp", "mv", "install", "ln", "rsync", "scp"}


def write_targets(argv: Sequence[str]) -> list[tuple[str, bool]]:
    """Absolute paths the command would change, each with whether everything below it is
    changed too (rm -r, mv, chmod -R)."""
    prog, args = program_name(argv[0]), list(argv[1:])
    flags = flags_in(args)
    paths: list[str] = []
    tree = False
    if prog in _REMOVERS:
        paths, tree = operands(args), prog == "rm"
    elif prog == "sed" and ("i" in flags or "in-place" in flags):
        paths = operands(args)
    elif prog in _MODE_CHANGERS:
        paths, tree = operands(args), bool({"R", "recursive"} & flags)
    elif prog in _COPIERS:
        sources = operands(args)
        dest = option_value(args, "-t", "--target-directory", stop_at_double_dash=True)
        if dest is None and len(sources) >= 2:
            dest, sources = sources[-1], sources[:-1]
        if dest is not None:
            # The destination may be a directory: the file lands at dest/basename(source).
            paths = [dest, *(posixpath.join(dest, posixpath.basename(s)) for s in sources)]
        if prog == "mv":
            paths += sources  # moving a file away breaks it as much as overwriting it
            tree = True
    elif prog == "dd":
        paths = [a[3:] for a in args if a.startswith("of=")]
    return [(normpath(p), tree) for p in paths if p.startswith("/")]
