"""The `fluid` command line: the parser assembled from the nouns, and the entry point that
turns every failure into a one-line message and an exit code."""

from __future__ import annotations

import argparse
import os
import sys

from cli import (
    attach,
    audit,
    change,
    completion,
    db,
    host,
    image,
    janitor,
    mcp,
    pool,
    production,
    run,
    sandbox,
    server,
    worker,
)
from cli.args import HelpFormatter, examples_epilog
from cli.output import error, log
from infra.errors import CommandTimeout, FluidError

DESCRIPTION = "The `fluid` command line."

# In the order `fluid --help` lists them.
NOUNS = (
    image,
    pool,
    sandbox,
    mcp,
    attach,
    production,
    change,
    run,
    server,
    host,
    worker,
    audit,
    janitor,
    db,
)

EXAMPLES = (
    "fluid sandbox --help",
    "fluid --version",
    'eval "$(fluid completion bash)"',
    "fluid --debug sandbox list",
)


class VersionAction(argparse.Action):
    """`--version`: looked up only when asked, so other commands do not pay for it."""

    def __init__(self, option_strings: list[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("fluid")
        except PackageNotFoundError:
            found = "unknown (the fluid package is not installed)"
        print(f"fluid {found}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole `fluid` parser; each parsed command's `fn` runs it."""
    p = argparse.ArgumentParser(
        prog="fluid",
        description=DESCRIPTION,
        epilog=examples_epilog(EXAMPLES),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action=VersionAction, help="print fluid's version and exit")
    p.add_argument(
        "--debug",
        action="store_true",
        help="on failure, print the traceback too (also FLUID_DEBUG=1)",
    )
    top = p.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for noun in NOUNS:
        noun.register(top)
    completion.register(top, p)
    return p


def debugging(args: argparse.Namespace | None) -> bool:
    """--debug, or FLUID_DEBUG set to anything but empty or 0."""
    if args is not None and args.debug:
        return True
    return os.environ.get("FLUID_DEBUG", "") not in ("", "0")


def one_line(e: BaseException) -> str:
    """An unexpected exception as one line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    more = " …" if len(lines) > 1 else ""
    return f"{text}{more} (--debug or FLUID_DEBUG=1 shows the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fluid` console script."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except CommandTimeout as e:
        failed(e, args, str(e))
        return 124
    except FluidError as e:
        failed(e, args, str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # A reader that stopped early (`fluid sandbox list | head -1`) is not a failure to
        # report; stdout is pointed at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        failed(e, args, one_line(e))
        return 1


def failed(e: BaseException, args: argparse.Namespace | None, message: str) -> None:
    """The traceback first when debugging, then the one line that says what failed."""
    if debugging(args):
        import traceback

        log("".join(traceback.format_exception(e)).rstrip())
    error(message)


if __name__ == "__main__":
    sys.exit(main())
