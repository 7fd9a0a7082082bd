"""Every part of the `fluid` command explains itself: each option and argument has help, each
command group ends its --help with examples, and every example is a command fluid accepts."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from importlib.metadata import version

import pytest

from cli.args import EXAMPLES_HEADING
from cli.main import build_parser
from tests.conftest import fluid

SHELL_OPERATORS = frozenset({">", ">>", "|", "&&", "||", ";"})


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with its command path, the root first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def undocumented(path: tuple[str, ...], parser: argparse.ArgumentParser) -> Iterator[str]:
    """Each option, argument or subcommand of `parser` that has no help text."""
    where = " ".join(("fluid", *path))
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for sub in action._get_subactions():
                if not (sub.help or "").strip():
                    yield f"{where} {sub.dest}"
        elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            yield f"{where} {'/'.join(action.option_strings) or action.dest}"


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The command lines listed under "Examples:" in a parser's epilog."""
    epilog = parser.epilog or ""
    if EXAMPLES_HEADING not in epilog:
        return []
    block = epilog.split(EXAMPLES_HEADING, 1)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_every_option_argument_and_command_has_help():
    missing = [m for path, p in parsers(build_parser()) for m in undocumented(path, p)]
    assert missing == []


def test_fluid_and_every_command_group_end_their_help_with_examples():
    root = build_parser()
    groups = [(path, p) for path, p in parsers(root) if len(path) <= 1]
    assert len(groups) > 10  # the tree was walked
    without = [" ".join(("fluid", *path)) for path, p in groups if not examples(p)]
    assert without == []


def every_example() -> list[str]:
    return [
        line
        for _, p in parsers(build_parser())
        for line in examples(p)
        if line.startswith("fluid ")
    ]


@pytest.mark.parametrize("line", every_example())
def test_each_example_is_a_command_fluid_accepts(line: str, capsys: pytest.CaptureFixture[str]):
    argv = shlex.split(line, comments=True)[1:]
    for i, word in enumerate(argv):
        if word in SHELL_OPERATORS:  # `> FILE` and the like are the shell's
            argv = argv[:i]
            break
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help and --version print and exit 0
        assert e.code == 0, capsys.readouterr().err
    else:
        assert callable(args.fn)


def test_a_command_group_help_ends_with_its_examples():
    r = fluid("sandbox", "--help")
    lines = r.stdout.decode().rstrip().splitlines()
    heading = lines.index(EXAMPLES_HEADING)
    assert lines[heading + 1 :] and all(
        line.startswith("  fluid sandbox ") for line in lines[heading + 1 :]
    )
    assert "  fluid sandbox exec web -- apt-get install -y nginx" in lines


def test_an_option_help_is_shown_where_it_was_missing():
    out = fluid("sandbox", "create", "--help").stdout.decode()
    assert "--network {nat,isolated}" in out and "isolated reaches" in out


def test_version_prints_the_installed_version():
    r = fluid("--version")
    assert r.stdout.decode() == f"fluid {version('fluid')}\n" and r.stderr == b""
