"""Talking to a guest: SSH with short-lived certificates (`ssh`, `ssh_ca`), QEMU's guest agent
before SSH is up (`guest_agent`), the agent's persistent tmux shell (`guest_shell`), and what a
command leaves behind, bounded (`command_output`).

Everything read back is attacker-written and bounded here. It may import infra's top-level
modules and `host`; the guest shell also asks `machines` for a sandbox's connection.
"""
