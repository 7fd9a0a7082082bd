"""The `fluid` command, the top layer: it owns parsing arguments, printing results (human or
`--json`) and exit codes, and holds no logic of its own. Each module is one noun (image, pool,
sandbox, production, change, run, server, audit, janitor, mcp, attach) whose `register` adds its
subcommands next to the functions that implement them; `cli.main` assembles them. It may import
every layer: infra/ freely, but flows/, tasks/, blocks/ and prefect only lazily, inside the
functions of the commands that need them (run, approve, reject, janitor, production's block),
so that sandbox, image and pool commands start fast and never import Prefect, directly or
through flows, tasks or blocks. `tests/test_layers.py` checks both rules.
"""
