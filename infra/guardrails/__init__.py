"""Guardrails for an agent's tool calls: which commands it may run and which files it may
touch, with its per-command and per-attempt limits. `policy` decides (the Guardrails model),
`rules` holds the command and path rules with fluid's defaults, `shell_commands` finds what a
command line runs (over `shell_text`, which scans shell text, and bashlex, fixed by
`bashlex_fix`), `argv` reads one simple command, `paths` compares paths, and `errors` holds
the refusal. It is Prefect-free: it imports the standard library, pydantic, bashlex and
infra's top-level modules (errors) only; the Prefect block that stores guardrails lives in
blocks/, and the tools that enforce them in infra/agents.
"""
