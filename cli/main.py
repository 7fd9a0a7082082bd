"""The `fluid` command line: the parser assembled from the nouns, and the entry point that
turns fluid's errors into messages and exit codes."""

from __future__ import annotations

import argparse
import sys

from cli import (
    attach,
    audit,
    change,
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
from cli.output import error
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


def build_parser() -> argparse.ArgumentParser:
    """The whole `fluid` parser; each parsed command's `fn` runs it."""
    p = argparse.ArgumentParser(prog="fluid", description=DESCRIPTION)
    top = p.add_subparsers(dest="group", required=True)
    for noun in NOUNS:
        noun.register(top)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fluid` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CommandTimeout as e:
        error(e)
        return 124
    except FluidError as e:
        error(e)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
