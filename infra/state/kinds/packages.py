"""Packages: dpkg's installed packages and apt's manual marks (RPM would be a sibling kind).

Also the evidence that credits an account to a package: the names its maintainer scripts could
create (the words of a preinst or postinst that calls adduser, useradd, addgroup, groupadd or
systemd-sysusers) and the accounts its sysusers.d files declare.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from pydantic import BaseModel

from infra.state import base
from infra.state.playbook_yaml import unsafe_each

SECTION = "@@fluid-section "

# Why a package change is brought by another rather than exported, by action.
AS_DEPENDENCY = {
    "added": "installed as a dependency",
    "removed": "removed as an unused dependency",
    "modified": "upgraded as a dependency",
}


class PackagesState(BaseModel):
    """Installed packages (name → version), the manual ones, and the account names each
    package's maintainer scripts and sysusers.d files account for."""

    installed: dict[str, str]
    manual: list[str]
    accounts: dict[str, list[str]] = {}
    script_paths: dict[str, list[str]] = {}
    alternatives: dict[str, str] = {}  # name -> auto | manual, from dpkg's alternatives db

    def account_makers(self, name: str, before: PackagesState) -> list[str]:
        """Packages installed or upgraded since `before` whose scripts or sysusers.d files
        account for the user or group `name` (empty: nothing credits it to a package)."""
        return sorted(
            p
            for p, names in self.accounts.items()
            if name in names and self.installed.get(p) not in (None, before.installed.get(p))
        )

    def managed_links(self, before: PackagesState) -> set[str]:
        """/etc/alternatives links the package system set, when packages changed since
        `before`: those of alternatives in auto mode (a `--set` by hand makes one manual), and
        of alternatives whose last member went."""
        if self.installed == before.installed:
            return set()
        names = {n for n, mode in self.alternatives.items() if mode == "auto"}
        names |= set(before.alternatives) - set(self.alternatives)
        return {f"{ALTERNATIVES_LINKS}/{n}" for n in names}

    def scripted_paths(self, before: PackagesState) -> set[str]:
        """Absolute paths named in the maintainer scripts of packages installed or upgraded
        since `before`: what those scripts may have made besides the payload."""
        return {
            path
            for p, paths in self.script_paths.items()
            if self.installed.get(p) not in (None, before.installed.get(p))
            for path in paths
        }


# As "package TAB word" lines: the words of maintainer scripts that make accounts, the u/g/m
# names of sysusers.d files, and the absolute paths any preinst or postinst names (the files a
# script makes: `ln -s`, `mkdir`). One awk over every such file (a process costs ~30 ms on TCG).
ACCOUNT_COMMANDS = "adduser|useradd|addgroup|groupadd|systemd-sysusers"
_ACCOUNTS_AWK = r"""
function pkg(path,   p) { p = path; sub(/.*\//, "", p); sub(/\.[a-z]+$/, "", p); sub(/:.*/, "", p)
  return p }
$0 == "--all--" { all = 1; next }
{
  if (index($0, ".list:") > 0) {
    p = pkg(substr($0, 1, index($0, ".list:") + 4)); f = substr($0, index($0, ".list:") + 6)
    while ((getline l < f) > 0) {
      n = split(l, w)
      if (w[1] == "u" || w[1] == "g") print p "\t" w[2]
      else if (w[1] == "m") print p "\t" w[2] "\n" p "\t" w[3]
    }
  } else {
    p = pkg($0); f = $0
    while ((getline l < f) > 0) {
      n = split(l, w, all ? "[^A-Za-z0-9_./-]+" : "[^A-Za-z0-9_.-]+")
      for (i = 1; i <= n; i++) {
        if (w[i] == "" || (all && (substr(w[i], 1, 1) != "/" || length(w[i]) < 2))) continue
        if (!((p, w[i]) in seen)) { seen[p, w[i]] = 1; print p "\t" w[i] }
      }
    }
  }
  close(f)
}
"""
ALTERNATIVES_DB = "/var/lib/dpkg/alternatives"
ALTERNATIVES_LINKS = "/etc/alternatives"
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class Packages(base.ResourceKind[PackagesState]):
    """The packages kind (dpkg/apt)."""

    name = "packages"
    order = 10
    state_model = PackagesState
    # dpkg's database (with its journal of unapplied updates) and apt's auto marks.
    watches = (
        "/var/lib/dpkg/status",
        "/var/lib/dpkg/updates",
        "/var/lib/dpkg/updates/*",
        "/var/lib/apt/extended_states",
    )

    def probe(self, params: dict[str, Any]) -> str:
        return (
            "dpkg-query -W -f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'\n"
            # apt's auto marks read directly: `apt-mark showmanual` loads apt's whole cache,
            # ~0.6 s on a TCG guest. Manual = installed and not marked auto, as apt-mark says.
            f"echo '{SECTION}auto'\n"
            "awk '/^Package:/ {p = $2} /^Auto-Installed: *1/ {print p}' "
            "/var/lib/apt/extended_states 2>/dev/null\n"
            f"echo '{SECTION}accounts'\n"
            "{ grep -H -E '^(/usr)?/lib/sysusers[.]d/[^/]*[.]conf$' /var/lib/dpkg/info/*.list; "
            f"grep -l -w -E '{ACCOUNT_COMMANDS}' "
            "/var/lib/dpkg/info/*.preinst /var/lib/dpkg/info/*.postinst; echo --all--; "
            "printf '%s\\n' /var/lib/dpkg/info/*.preinst /var/lib/dpkg/info/*.postinst; } "
            "2>/dev/null "
            f"| awk {shlex.quote(_ACCOUNTS_AWK)}\n"
            f"echo '{SECTION}alternatives'\n"
            f"awk 'FNR == 1 {{print FILENAME \"\\t\" $0}}' {ALTERNATIVES_DB}/* 2>/dev/null"
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
        accounts: dict[str, set[str]] = {}
        paths: dict[str, set[str]] = {}
        for line in sections.get("accounts", []):
            package, _, word = line.partition("\t")
            if package not in installed:
                continue
            if word.startswith("/"):
                paths.setdefault(package, set()).add(word.rstrip("/"))
            elif ACCOUNT_NAME.fullmatch(word):
                accounts.setdefault(package, set()).add(word)
        return PackagesState(
            installed=installed,
            manual=manual,
            accounts={p: sorted(names) for p, names in accounts.items()},
            script_paths={p: sorted(found) for p, found in paths.items()},
            alternatives={
                path.rpartition("/")[2]: mode
                for path, _, mode in (a.partition("\t") for a in sections.get("alternatives", []))
                if mode in ("auto", "manual")
            },
        )

    def diff(
        self, before: PackagesState, after: PackagesState, ctx: base.DiffContext
    ) -> list[base.Change]:
        changes = []
        manual_after, manual_before = set(after.manual), set(before.manual)
        for name in base.changed_keys(before.installed, after.installed):
            b, a = before.installed.get(name), after.installed.get(name)
            action = "added" if b is None else "removed" if a is None else "modified"
            detail = {
                "added": f"installed {a}",
                "removed": f"removed {b}",
                "modified": f"version {b} → {a}",
            }[action]
            ch = base.Change(
                kind=self.name,
                key=name,
                action=action,
                before=None if b is None else {"version": b},
                after=None if a is None else {"version": a},
                details=[detail],
            )
            # A package nobody marked manual came along with one that was asked for.
            if name not in (manual_before if action == "removed" else manual_after):
                ch.brought_by(AS_DEPENDENCY[action])
            changes.append(ch)
        return changes

    def export(self, changes: list[base.Change], ctx: base.ExportContext) -> base.TaskBundle:
        # Package names and versions are the guest's (dpkg's answer): each tagged !unsafe.
        bundle = base.TaskBundle()
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
                    "name": "Install packages",
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
                    "name": "Remove packages",
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
