"""How the nouns declare their subcommands and the options several of them share."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from infra.errors import FluidError

Command = Callable[[argparse.Namespace], int]

EXAMPLES_HEADING = "Examples:"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's layout, except in a description or epilog: a line that starts with a space
    (an example's command line) is kept as written, every other line is wrapped on its own."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap  # only when help is shown, as argparse does

        return "\n".join(
            indent + line
            if line[:1].isspace() or not line
            else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            for line in text.splitlines()
        )


def examples_epilog(examples: Sequence[str]) -> str | None:
    """The "Examples:" block that ends a command's help, one command line per line."""
    if not examples:
        return None
    return "\n".join([EXAMPLES_HEADING, *(f"  {line}" for line in examples)])


def add_command(
    parent: argparse._SubParsersAction,
    name: str,
    fn: Command,
    help: str,
    json_flag: bool = True,
    *,
    examples: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """Add subcommand `name` that runs `fn`; its help is its description too; `examples`
    (command lines) end its --help."""
    sp = _parser(parent, name, help, examples)
    sp.set_defaults(fn=fn)
    if json_flag:
        sp.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return sp


def add_session_command(
    top: argparse._SubParsersAction,
    name: str,
    fn: Command,
    help: str,
    *,
    examples: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """Add top-level command `name` that holds a session with one sandbox (positional SANDBOX):
    its output is the session, so it has no --json."""
    sp = add_command(top, name, fn, help, json_flag=False, examples=examples)
    sp.add_argument("sandbox", help="the sandbox's id (`fluid sandbox list`)")
    return sp


def add_noun(
    top: argparse._SubParsersAction, name: str, help: str, *, examples: Sequence[str] = ()
) -> argparse._SubParsersAction:
    """Add a noun that only groups subcommands (`fluid NOUN CMD`); `examples` (command lines)
    end `fluid NOUN --help`."""
    return _parser(top, name, help, examples).add_subparsers(dest="cmd", required=True)


def _parser(
    parent: argparse._SubParsersAction, name: str, help: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    # A command's or noun's parser: its help is its description, its examples end --help.
    return parent.add_parser(
        name,
        help=help,
        description=help,
        epilog=examples_epilog(examples),
        formatter_class=HelpFormatter,
    )


def accept_exclusion_option(sp: argparse.ArgumentParser) -> None:
    """--accept-exclusion KEY (repeatable), shared by verify and run."""
    sp.add_argument(
        "--accept-exclusion",
        dest="accept_exclusions",
        action="append",
        metavar="KEY",
        default=None,
        help="accept that the playbook leaves out the change with this key (a path, "
        "'user NAME'…; repeatable); the proof fails on any exclusion not accepted",
    )


def parse_labels(pairs: list[str] | None) -> dict[str, str] | None:
    """`--label K=V` options as a dict; None when none were given; FluidError on a bad one."""
    if not pairs:
        return None
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FluidError(f"--label {pair!r}: give a label as KEY=VALUE, e.g. --label zone=a")
        labels[key.strip()] = value.strip()
    return labels


def count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is below 0: give a count, 0 or more")
    return value
