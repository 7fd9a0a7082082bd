"""Ansible: running a playbook directory with ansible-runner (`playbook_runs`) and proving it
the Molecule way on a fresh sandbox (`verification`).

It may import `machines` (the replay sandbox), `state` (the captures it compares) and
infra's top-level modules.
"""
