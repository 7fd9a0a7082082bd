"""The VM lifecycle: sandboxes (linked clones with a TTL) and production VMs (standalone
copies), and what is built on them: spares started ahead of need, warm slots restored instead
of booted, named checkpoints, the owners of a sandbox and the janitor that reaps the rest.

It may import `host`, `transport`, `records` and `state` (a spare's baseline capture).
"""
