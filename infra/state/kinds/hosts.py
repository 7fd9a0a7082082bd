"""Hosts: the agent's lines of /etc/hosts and the name in /etc/hostname, not fluid's.

fluid names each sandbox in both files (the image's `127.0.1.1 sandbox`, an imported image's
instance id), and every production host has its own name there. So only the other lines are
compared, and they are exported line by line (lineinfile): applied to a host, the playbook adds
and removes the agent's lines and leaves that host's own name alone. The files kind reports
the files' mode, owner and group.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from infra.state import base
from infra.state.kinds.packages import SECTION
from infra.state.playbook_yaml import task_name, unsafe

HOSTS = "/etc/hosts"
HOSTNAME = "/etc/hostname"
# The name infra/guest/configure-image.sh gives the golden image; a sandbox's own name is its id.
IMAGE_HOSTNAME = "sandbox"
# Read at most this much of each file: a hosts file is small, and the guest is not trusted.
MAX_BYTES = 1 << 20
# In place of fluid's name when lines naming it are compared between two sandboxes.
OWN_NAME = "(own name)"
OWN = "(the sandbox's own)"


class HostsState(BaseModel):
    """The two files' lines (None: the file does not exist)."""

    hosts: list[str] | None = None
    hostname: list[str] | None = None


def _own(name: str, names: set[str]) -> bool:
    return name in names or name.split(".", 1)[0] in names


def _split(lines: list[str] | None, names: set[str]) -> tuple[set[str], list[str]]:
    """The agent's lines (blank ones aside) and fluid's (those naming the machine itself,
    its own name replaced so two sandboxes' compare equal)."""
    agent: set[str] = set()
    own: list[str] = []
    for line in lines or []:
        fields = line.split("#", 1)[0].split()
        if len(fields) > 1 and any(_own(n, names) for n in fields[1:]):
            own.append(
                " ".join([fields[0], *(OWN_NAME if _own(n, names) else n for n in fields[1:])])
            )
        elif line.strip():
            agent.add(line)
    return agent, sorted(own)


def _text(lines: list[str] | None) -> bytes | None:
    return None if lines is None else ("\n".join(lines) + "\n").encode()


class Hosts(base.ResourceKind[HostsState]):
    """The hosts kind: /etc/hosts lines and the /etc/hostname value the agent changed."""

    name = "hosts"
    order = 45
    state_model = HostsState
    owned_globs = (HOSTS, HOSTNAME)
    watches = (HOSTS, HOSTNAME)

    def probe(self, params: dict[str, Any]) -> str:
        return "".join(
            f"if [ -f {path} ]; then echo '{SECTION}{path}'; head -c {MAX_BYTES} {path}; echo; fi\n"
            for path in (HOSTS, HOSTNAME)
        )

    def parse(self, output: str) -> HostsState:
        # Split on newlines only (str.splitlines would also split a line at \r, \x85 …).
        sections: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in output.split("\n"):
            if line.startswith(SECTION) and line[len(SECTION) :] in (HOSTS, HOSTNAME):
                current = sections[line[len(SECTION) :]] = []
            elif current is not None:
                current.append(line)

        def lines(path: str) -> list[str] | None:
            found = sections.get(path)
            if found is None:
                return None
            while found and found[-1] == "":
                found.pop()  # the probe's `echo` and the file's last newline
            return found

        return HostsState(hosts=lines(HOSTS), hostname=lines(HOSTNAME))

    def diff(
        self, before: HostsState, after: HostsState, ctx: base.DiffContext
    ) -> list[base.Change]:
        names = {IMAGE_HOSTNAME} | {
            c.sandbox_id for c in (ctx.before, ctx.after) if c.sandbox_id is not None
        }
        changes: list[base.Change] = []
        old, old_own = _split(before.hosts, names)
        new, new_own = _split(after.hosts, names)
        added, removed = sorted(new - old), sorted(old - new)
        if added or removed:
            changes.append(
                base.Change(
                    kind=self.name,
                    key=HOSTS,
                    action="modified",
                    after={"added": added, "removed": removed},
                    details=[f"+ {line}" for line in added] + [f"- {line}" for line in removed],
                    text_diff=_unified(HOSTS, before.hosts, after.hosts),
                )
            )
        if old_own != new_own:
            ch = base.Change(
                kind=self.name,
                key=f"{HOSTS}: the machine's own name",
                action="modified",
                before={"lines": old_own},
                after={"lines": new_own},
                details=["a line naming the sandbox itself changed"],
                text_diff=_unified(HOSTS, before.hosts, after.hosts),
            )
            ch.exported = False
            ch.note = (
                "not exported: it edits the line naming the machine itself, which every host "
                "has its own of; make that change on the target apart from the playbook"
            )
            changes.append(ch)
        old_name = _hostname(before.hostname, names)
        new_name = _hostname(after.hostname, names)
        if old_name != new_name:
            ch = base.Change(
                kind=self.name,
                key=HOSTNAME,
                action="modified",
                before={"hostname": old_name},
                after={"hostname": new_name},
                details=[f"hostname {old_name or OWN} → {new_name or OWN}"],
                text_diff=_unified(HOSTNAME, before.hostname, after.hostname),
            )
            if new_name is None:
                ch.exported = False
                ch.note = (
                    "not exported: the name was set back to the sandbox's own, which no other "
                    "host has"
                )
            changes.append(ch)
        return changes

    def export(self, changes: list[base.Change], ctx: base.ExportContext) -> base.TaskBundle:
        # Lines and names are the guest's: tagged !unsafe. Paths and states are fluid's.
        bundle = base.TaskBundle()
        for c in (c for c in changes if c.exported):
            if c.key == HOSTS:
                for state, key in (("absent", "removed"), ("present", "added")):
                    for line in c.after[key]:
                        verb = "Add to" if state == "present" else "Remove from"
                        bundle.tasks.append(
                            {
                                "name": task_name(f"{verb} {HOSTS}: {line}"),
                                "ansible.builtin.lineinfile": {
                                    "path": HOSTS,
                                    "line": unsafe(line),
                                    "state": state,
                                },
                            }
                        )
            elif c.key == HOSTNAME:
                name = c.after["hostname"]
                bundle.tasks.append(
                    {
                        "name": task_name(f"Hostname {name}"),
                        # Debian's mode; one the agent set instead comes from the files
                        # kind's metadata task, which runs after every kind's tasks.
                        "ansible.builtin.copy": {
                            "dest": HOSTNAME,
                            "content": unsafe(name + "\n"),
                            "mode": "0644",
                        },
                    }
                )
        return bundle


def _hostname(lines: list[str] | None, names: set[str]) -> str | None:
    """The name /etc/hostname sets, unless it is fluid's (or there is none)."""
    value = next((line.strip() for line in lines or [] if line.strip()), None)
    return None if value is None or _own(value, names) else value


def _unified(path: str, old: list[str] | None, new: list[str] | None) -> str:
    return base.unified_diff(path, _text(old), _text(new))
