"""fluid's records: the store (SQLModel tables on SQLite or PostgreSQL), the account of
agent-task runs and their decisions, and the hash-chained audit trail.

It may import infra's top-level modules and `host.permissions`; runs read a playbook's result
type and digest from `ansible` and `state`.
"""
