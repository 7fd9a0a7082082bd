"""The engine: everything that touches the host or a guest, and nothing of orchestration.

It imports the standard library, third-party libraries other than Prefect, and itself; never
prefect, orchestration, tasks, flows, blocks or cli. Its packages, by concern:
`host` (libvirt, domains, images, ports, firewall, locks, private files), `transport` (talking
to a guest: SSH and its CA, the guest agent, the agent's shell), `machines` (the VM lifecycle of
sandboxes and production VMs, with spares, warm slots, checkpoints and the janitor), `records`
(the store, runs and the audit chain), `state` (capture, compare and export a guest's state),
`ansible` (playbook runs and their proof), `guardrails` and `agents`. The modules left at the
top (errors, settings, names, escaping) are used by all of them.
"""
