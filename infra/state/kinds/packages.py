"""Packages: dpkg's installed packages and apt's manual marks (RPM would be a sibling kind)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from infra.state.base import Change, DiffContext, ExportContext, ResourceKind, TaskBundle
from infra.state.playbook_yaml import unsafe_each

SECTION = "@@fluid-section "


class PackagesState(BaseModel):
    """Installed packages (name → version), the manual ones, and dpkg's recent runs."""

    installed: dict[str, str]
    manual: list[str]
    dpkg_runs: list[tuple[float, float]] = []

    def dpkg_windows(self, since: datetime | None = None) -> list[tuple[float, float]]:
        """Time windows (epoch seconds) in which dpkg ran, after `since` if given."""
        if since is None:
            return list(self.dpkg_runs)
        cutoff = (since - timedelta(seconds=5)).timestamp()
        return [(s, e) for s, e in self.dpkg_runs if e >= cutoff]


def _runs(log_lines: list[str]) -> list[tuple[float, float]]:
    """dpkg invocations from /var/log/dpkg.log, merged when they follow within 2 s."""
    runs: list[list[float]] = []
    for line in log_lines:
        try:
            ts = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            continue
        t = ts.timestamp()
        if " startup " in line and (not runs or t - runs[-1][1] > 2):
            runs.append([t, t])
        elif runs:
            runs[-1][1] = t
    # the log has whole seconds: the last second lasts until its end
    return [(s, e + 1.0) for s, e in runs]


class Packages(ResourceKind[PackagesState]):
    """The packages kind (dpkg/apt)."""

    name = "packages"
    order = 10
    state_model = PackagesState
    # dpkg's database (with its journal of unapplied updates), apt's auto marks and the log.
    watches = (
        "/var/lib/dpkg/status",
        "/var/lib/dpkg/updates",
        "/var/lib/dpkg/updates/*",
        "/var/lib/apt/extended_states",
        "/var/log/dpkg.log",
    )

    def probe(self, params: dict[str, Any]) -> str:
        return (
            "dpkg-query -W -f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'\n"
            # apt's auto marks read directly: `apt-mark showmanual` loads apt's whole cache,
            # ~0.6 s on a TCG guest. Manual = installed and not marked auto, as apt-mark says.
            f"echo '{SECTION}auto'\n"
            "awk '/^Package:/ {p = $2} /^Auto-Installed: *1/ {print p}' "
            "/var/lib/apt/extended_states 2>/dev/null\n"
            f"echo '{SECTION}log'\n"
            "cat /var/log/dpkg.log 2>/dev/null | grep -E ' (startup|status|configure|install"
            "|remove|purge|upgrade|trigproc) ' | tail -n 5000"
        )

    def parse(self, output: str) -> PackagesState:
        sections = split_sections(output)
        installed = {}
        for line in sections[""]:
            parts = line.split("\t")
            if len(parts) == 3 and parts[2].startswith("ii"):
                installed[parts[0]] = parts[1]
        auto = {p.split(":")[0] for p in sections.get("auto", []) if p}
        manual = sorted(name for name in installed if name not in auto)
        return PackagesState(
            installed=installed, manual=manual, dpkg_runs=_runs(sections.get("log", []))
        )

    def diff(self, before: PackagesState, after: PackagesState, ctx: DiffContext) -> list[Change]:
        changes = []
        manual_after, manual_before = set(after.manual), set(before.manual)
        for name in sorted(set(before.installed) | set(after.installed)):
            b, a = before.installed.get(name), after.installed.get(name)
            if b == a:
                continue
            if b is None:
                ch = Change(
                    kind=self.name,
                    key=name,
                    action="added",
                    after={"version": a},
                    details=[f"installed {a}"],
                )
                if name not in manual_after:
                    ch.exported, ch.note = False, "installed as a dependency"
            elif a is None:
                ch = Change(
                    kind=self.name,
                    key=name,
                    action="removed",
                    before={"version": b},
                    details=[f"removed {b}"],
                )
                if name not in manual_before:
                    ch.exported, ch.note = False, "removed as an unused dependency"
            else:
                ch = Change(
                    kind=self.name,
                    key=name,
                    action="modified",
                    before={"version": b},
                    after={"version": a},
                    details=[f"version {b} → {a}"],
                )
                if name not in manual_after:
                    ch.exported, ch.note = False, "upgraded as a dependency"
            changes.append(ch)
        return changes

    def export(self, changes: list[Change], ctx: ExportContext) -> TaskBundle:
        # Package names and versions are the guest's (dpkg's answer): each tagged !unsafe.
        bundle = TaskBundle()
        install = [c.key for c in changes if c.exported and c.action == "added"]
        upgrade = [
            f"{c.key}={c.after['version']}"
            for c in changes
            if c.exported and c.action == "modified"
        ]
        remove = [c.key for c in changes if c.exported and c.action == "removed"]
        # Images ship empty package lists; refresh them unless they are recent.
        if install or upgrade:
            bundle.tasks.append(
                {
                    "name": "install packages",
                    "ansible.builtin.apt": {
                        "name": unsafe_each(install + upgrade),
                        "state": "present",
                        "update_cache": True,
                        "cache_valid_time": 3600,
                    },
                }
            )
        if remove:
            bundle.tasks.append(
                {
                    "name": "remove packages",
                    "ansible.builtin.apt": {"name": unsafe_each(remove), "state": "absent"},
                }
            )
        return bundle


def split_sections(output: str) -> dict[str, list[str]]:
    """A probe's output by SECTION markers (lines before the first one under "")."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in output.splitlines():
        if line.startswith(SECTION):
            current = line[len(SECTION) :].strip()
            out[current] = []
        else:
            out[current].append(line)
    return out
