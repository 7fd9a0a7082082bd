"""Prefect plumbing: fluid's local Prefect server, worker and deployments (`control_plane`),
the client that reads and decides runs (`client`) and the per-host sandbox slots
(`limits`).

It may import prefect and infra/; never tasks, flows, blocks or cli (deployments name flows by
entrypoint, not by import). `control_plane` itself imports no Prefect module, so the `fluid
server` commands start fast.
"""
