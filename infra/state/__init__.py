"""Guest state: capture what a machine is, compare two captures, export the change as Ansible.

Each kind of resource (packages, files, services, users, cron, sysctl) is one module in
`infra/state/kinds/`, in the shape of pytest-testinfra: it knows how to capture itself, how
to compare two captures and how to express a change as Ansible tasks.
"""
