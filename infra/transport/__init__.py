"""Talking to a guest. One protocol (`protocol`: run a shell command, get one `CommandResult`;
upload and read a file where the transport can) and its transports: SSH with short-lived
certificates and pinned host keys (`ssh`, `ssh_ca`, `host_keys`), the agent's persistent tmux
shell (`guest_shell`, its guest side in `tmux_session`), and QEMU's guest agent before SSH is up
(`guest_agent`). What a command leaves behind, bounded, is `command_output`.

Everything read back is attacker-written and bounded here. It may import infra's top-level
modules (errors, settings) and `host`; never machines, state, records, agents or anything that
uses a transport (they ask for one and pass it in).
"""
