"""Cron: entries of /etc/crontab, /etc/cron.d and users' crontabs, compared line by line."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel

from infra.state import base
from infra.state.playbook_yaml import task_name, unsafe, unsafe_each

SPOOL = "/var/spool/cron/crontabs/"
ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")
SPECIAL = {
    "@reboot": "reboot",
    "@yearly": "yearly",
    "@annually": "annually",
    "@monthly": "monthly",
    "@weekly": "weekly",
    "@daily": "daily",
    "@hourly": "hourly",
}


class CronEntry(BaseModel):
    file: str
    user: str
    schedule: str
    job: str


class CronState(BaseModel):
    entries: list[CronEntry]


def _parse_file(path: str, text: str) -> list[CronEntry]:
    out = []
    spool_user = path.removeprefix(SPOOL) if path.startswith(SPOOL) else None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or ENV_LINE.match(line):
            continue
        fields = line.split()
        n = 1 if fields[0].startswith("@") else 5
        if spool_user is None:
            if len(fields) < n + 2:
                continue
            schedule, user, job = " ".join(fields[:n]), fields[n], " ".join(fields[n + 1 :])
        else:
            if len(fields) < n + 1:
                continue
            schedule, user, job = " ".join(fields[:n]), spool_user, " ".join(fields[n:])
        out.append(CronEntry(file=path, user=user, schedule=schedule, job=job))
    return out


class Cron(base.ResourceKind[CronState]):
    """The cron kind."""

    name = "cron"
    order = 50
    state_model = CronState
    owned_globs = ("/etc/crontab", "/etc/cron.d/*", "/var/spool/cron/crontabs/*")
    watches = ("/etc/crontab", "/etc/cron.d", "/etc/cron.d/*", SPOOL, f"{SPOOL}*")

    def probe(self, params: dict[str, Any]) -> str:
        return (
            f"for f in /etc/crontab /etc/cron.d/* {SPOOL}*; do\n"
            '  [ -f "$f" ] || continue\n'
            '  echo "@@fluid-file $f"; cat "$f"; echo\n'
            "done"
        )

    def parse(self, output: str) -> CronState:
        entries: list[CronEntry] = []
        path, buf = None, []
        for line in output.splitlines() + ["@@fluid-file "]:
            if line.startswith("@@fluid-file "):
                if path:
                    entries.extend(_parse_file(path, "\n".join(buf)))
                path, buf = line.removeprefix("@@fluid-file ").strip(), []
            else:
                buf.append(line)
        return CronState(entries=entries)

    def diff(self, before: CronState, after: CronState, ctx: base.DiffContext) -> list[base.Change]:
        b = {e.model_dump_json(): e for e in before.entries}
        a = {e.model_dump_json(): e for e in after.entries}
        changes = []
        # Each entry is keyed by itself: a changed line is one removed and one added.
        differ = base.changed_keys(b, a)
        for key in (k for k in differ if k not in b):
            e = a[key]
            ch = base.Change(
                kind=self.name,
                key=f"{e.file}: {e.schedule} {e.job}",
                action="added",
                after=e.model_dump(),
                details=[f"as {e.user}"],
            )
            if e.schedule.startswith("@") and e.schedule not in SPECIAL:
                ch.exported = False
                ch.note = f"not exported: cron has no schedule {e.schedule!r}"
            changes.append(ch)
        for key in (k for k in differ if k not in a):
            e = b[key]
            changes.append(
                base.Change(
                    kind=self.name,
                    key=f"{e.file}: {e.schedule} {e.job}",
                    action="removed",
                    before=e.model_dump(),
                    details=[f"as {e.user}"],
                )
            )
        return changes

    def export(self, changes: list[base.Change], ctx: base.ExportContext) -> base.TaskBundle:
        # Files, users, schedules and jobs are the guest's: tagged !unsafe. The entry's marker
        # name (a hash of the change) and special_time (from SPECIAL) are fluid's own.
        bundle = base.TaskBundle()
        for c in (c for c in changes if c.exported):
            e = CronEntry.model_validate(c.after or c.before)
            if c.action == "removed":
                # Lines fluid did not write have no Ansible marker; remove the exact line.
                pattern = (
                    r"^\s*"
                    + r"\s+".join(
                        re.escape(x)
                        for x in (
                            e.schedule.split()
                            + ([] if e.file.startswith(SPOOL) else [e.user])
                            + e.job.split()
                        )
                    )
                    + r"\s*$"
                )
                bundle.tasks.append(
                    {
                        "name": task_name(f"Remove cron line {e.job}"),
                        "ansible.builtin.lineinfile": {
                            "path": unsafe(e.file),
                            "regexp": unsafe(pattern),
                            "state": "absent",
                        },
                    }
                )
                continue
            args: dict[str, Any] = {
                "name": f"fluid {hashlib.sha256(c.key.encode()).hexdigest()[:12]}",
                "job": unsafe(e.job),
                "user": unsafe(e.user),
            }
            if e.schedule.startswith("@"):
                args["special_time"] = SPECIAL[e.schedule]
            else:
                minute, hour, day, month, weekday = unsafe_each(e.schedule.split())
                args.update(minute=minute, hour=hour, day=day, month=month, weekday=weekday)
            if not e.file.startswith(SPOOL):
                args["cron_file"] = unsafe(e.file)
            bundle.tasks.append(
                {"name": task_name(f"Cron {e.schedule} {e.job}"), "ansible.builtin.cron": args}
            )
        return bundle
