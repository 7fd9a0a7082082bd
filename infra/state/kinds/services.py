"""Services: systemd units enabled, disabled, masked, and whether they are active."""

from __future__ import annotations

import shlex
from typing import Any

from pydantic import BaseModel

from infra.state import base
from infra.state.kinds.packages import SECTION, split_sections
from infra.state.playbook_yaml import task_name, unsafe

UNIT_TYPES = "service,socket,timer,path"
LIST_UNIT_FILES = f"systemctl list-unit-files --no-legend --no-pager --type={UNIT_TYPES}"
# Where systemd looks for units and their enablement (`systemd-analyze unit-paths`), plus the
# preset dirs list-unit-files reports.
UNIT_TREES = (
    "/etc/systemd/system.control /run/systemd/system.control /run/systemd/transient "
    "/run/systemd/generator.early /etc/systemd/system /etc/systemd/system.attached "
    "/run/systemd/system /run/systemd/system.attached /run/systemd/generator "
    "/usr/local/lib/systemd/system /usr/lib/systemd/system /lib/systemd/system "
    "/run/systemd/generator.late "
    "/etc/systemd/system-preset /run/systemd/system-preset /usr/lib/systemd/system-preset "
    "/lib/systemd/system-preset"
)
BASE_LISTING = f"{base.STAGING}/unit-trees.before"
CHANGED_UNITS = f"{base.STAGING}/units.changed"
# Passes `find`'s listing of the unit trees through and writes to CHANGED_UNITS the units named
# by each line that is new or gone since the previous listing (`path TAB link-target ...`):
# what the path and its link target are, link to or drop in for, and an instance's template.
# One awk instead of sort, comm, awk, sort and cat: each process costs ~25 ms on TCG.
_CHANGED_UNITS_AWK = r"""
function names(line,   f, i, n, p, u) {
  split(line, f, "\t")
  for (i = 1; i <= 2; i++) {
    n = split(f[i], p, "/"); u = p[n]
    if (u ~ /\.d$/) u = substr(u, 1, length(u) - 2)
    else if (n > 1 && p[n-1] ~ /\.d$/) u = substr(p[n-1], 1, length(p[n-1]) - 2)
    if (u ~ /\.(service|socket|timer|path)$/) {
      found[u] = 1
      if (u ~ /@./) { sub(/@.*\./, "@.", u); found[u] = 1 }
    }
  }
}
BEGIN { while ((getline line < base) > 0) old[line] = 1 }
{ print; if ($0 in old) delete old[$0]; else names($0) }
END {
  for (line in old) names(line)
  printf "" > out
  for (u in found) print u > out
}
"""
# Enablement states that are someone's decision; static, generated, alias … are not.
DECIDED = {"enabled", "disabled", "masked"}
IGNORED_UNITS = {"fluid-instance.service"}


class Unit(BaseModel):
    """One unit's enablement and activity."""

    enablement: str
    active: str = "inactive"


class ServicesState(BaseModel):
    """systemd units by name."""

    units: dict[str, Unit]


class Services(base.ResourceKind[ServicesState]):
    """The services kind (systemd)."""

    name = "services"
    order = 60
    state_model = ServicesState
    # enablement links and masks are how systemd stores these decisions
    owned_globs = (
        "/etc/systemd/system/*.wants",
        "/etc/systemd/system/*.wants/*",
        "/etc/systemd/system/*.requires",
        "/etc/systemd/system/*.requires/*",
    )

    remembers = True

    def _previous(self, params: dict[str, Any]) -> str | None:
        return params.get("previous", {}).get(self.name)

    def uploads(self, params: dict[str, Any]) -> dict[str, bytes]:
        previous = self._previous(params)
        if previous is None:
            return {}
        return {
            BASE_LISTING: ("\n".join(split_sections(previous).get("listing", [])) + "\n").encode()
        }

    def probe(self, params: dict[str, Any]) -> str:
        # list-unit-files costs 4-7 s on a TCG guest (systemd reads every unit and symlink per
        # unit). Enablement lives in these trees, so given the listing of the sandbox's previous
        # capture only units named by a changed entry are asked about; `complete` merges them.
        listing = f"find {UNIT_TREES} -printf '%p\\t%l\\t%s\\t%T@\\t%C@\\n' 2>/dev/null"
        if self._previous(params) is not None:
            query = (
                f"echo '{SECTION}listing'\n"
                f"{listing} | awk -v base={BASE_LISTING} -v out={CHANGED_UNITS} "
                f"{shlex.quote(_CHANGED_UNITS_AWK)}\n"
                f'units=; while read -r u; do units="$units $u"; done < {CHANGED_UNITS}\n'
                f"echo '{SECTION}asked'\nprintf '%s\\n' $units\n"
                f"echo '{SECTION}'\n"
                f'[ -z "$units" ] || {LIST_UNIT_FILES} $units'
            )
        else:
            query = f"echo '{SECTION}listing'\n{listing}\necho '{SECTION}'\n{LIST_UNIT_FILES}"
        return (
            f"{query}\n"
            f"echo '{SECTION}active'\n"
            f"systemctl list-units --all --no-legend --no-pager --plain --type={UNIT_TYPES}"
        )

    def complete(self, output: str, previous: str | None) -> str:
        sections = split_sections(output)
        if "asked" not in sections or previous is None:
            return output
        asked = set(" ".join(sections["asked"]).split())
        files = {
            n: line for n, line in _by_unit(split_sections(previous)[""]).items() if n not in asked
        }
        files.update(_by_unit(sections[""]))
        return "\n".join(
            [
                *(files[name] for name in sorted(files)),
                f"{SECTION}listing",
                *sections.get("listing", []),
                f"{SECTION}active",
                *sections.get("active", []),
            ]
        )

    def parse(self, output: str) -> ServicesState:
        sections = split_sections(output)
        units: dict[str, Unit] = {}
        for line in sections[""]:
            parts = line.split()
            if len(parts) >= 2 and "@." not in parts[0]:
                units[parts[0]] = Unit(enablement=parts[1])
        for line in sections.get("active", []):
            parts = line.split()
            if len(parts) >= 3 and parts[0] in units:
                units[parts[0]].active = parts[2]
        return ServicesState(units=units)

    def diff(
        self, before: ServicesState, after: ServicesState, ctx: base.DiffContext
    ) -> list[base.Change]:
        changes = []
        for name in base.changed_keys(before.units, after.units, _decided):
            if name in IGNORED_UNITS:
                continue
            b, a = before.units.get(name), after.units.get(name)
            bd, ad = _decided(b), _decided(a)
            if bd == ad:  # absent on one side, undecided on the other
                continue
            if a is None or ad is None:
                # The unit file went away (its package or file removal covers it).
                continue
            details = []
            if (bd or {}).get("enablement") != ad["enablement"]:
                details.append(f"{(bd or {}).get('enablement', 'absent')} → {ad['enablement']}")
            if (bd or {}).get("active") != ad["active"]:
                details.append(f"{(bd or {}).get('active', 'inactive')} → {ad['active']}")
            changes.append(
                base.Change(
                    kind=self.name,
                    key=name,
                    action="added" if bd is None else "modified",
                    before=bd,
                    after=ad,
                    details=details,
                )
            )
        return changes

    def export(self, changes: list[base.Change], ctx: base.ExportContext) -> base.TaskBundle:
        bundle = base.TaskBundle()
        for i, c in enumerate(c for c in changes if c.exported):
            args: dict[str, Any] = {"name": unsafe(c.key)}  # the guest's unit name
            if i == 0:
                args["daemon_reload"] = True  # unit files may have been added just before
            e = c.after["enablement"]
            if e == "masked":
                args["masked"] = True
            else:
                args["enabled"] = e == "enabled"
                if (c.before or {}).get("enablement") == "masked":
                    args["masked"] = False
                if c.after["active"] == "active":
                    args["state"] = "started"
                elif c.after["active"] in ("inactive", "failed"):
                    args["state"] = "stopped"
            bundle.tasks.append(
                {"name": task_name(f"Service {c.key}"), "ansible.builtin.systemd_service": args}
            )
        return bundle


def _by_unit(lines: list[str]) -> dict[str, str]:
    """list-unit-files lines by their unit name."""
    return {parts[0]: line for line in lines if (parts := line.split())}


def _decided(u: Unit | None) -> dict[str, str] | None:
    """The parts of a unit that are a decision: enablement if decided, activity of services."""
    if u is None or u.enablement not in DECIDED:
        return None
    active = u.active if u.active in ("active", "inactive", "failed") else "inactive"
    if u.active == "activating":
        active = "active"
    return {"enablement": u.enablement, "active": active}
