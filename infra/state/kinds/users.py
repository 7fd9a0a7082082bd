"""Users and groups, with their authorized_keys and sudoers drop-ins.

Password hashes are never captured: only whether a password is locked, unset or set.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from pydantic import BaseModel

from infra.state import base
from infra.state.kinds.packages import split_sections
from infra.state.playbook_files import content
from infra.state.playbook_yaml import removal_task, task_name, unsafe, unsafe_each


class User(BaseModel):
    uid: int
    group: str
    groups: list[str]
    home: str
    shell: str
    comment: str
    password: str  # locked | none | set


class Group(BaseModel):
    gid: int


class Secret(BaseModel):
    """A file this kind owns (authorized_keys, a sudoers drop-in)."""

    owner: str
    group: str
    mode: int
    sha256: str


class UsersState(base.CarriesBlobs):
    users: dict[str, User]
    groups: dict[str, Group]
    files: dict[str, Secret]


PROBE = r"""
cat /etc/passwd
echo '@@fluid-section group'
cat /etc/group
echo '@@fluid-section shadow'
cut -d: -f1,2 /etc/shadow | sed 's/:\$.*/:set/'
echo '@@fluid-section files'
for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys /etc/sudoers.d/*; do
  [ -f "$f" ] || continue
  printf '%s\t%s\t%s\t%s\t' "$f" "$(stat -c %U "$f")" "$(stat -c %G "$f")" "$(stat -c %a "$f")"
  base64 -w0 "$f"; echo
done
"""


class Users(base.ResourceKind[UsersState]):
    """The users kind: accounts, groups, authorized keys and sudo rules."""

    name = "users"
    order = 20
    state_model = UsersState
    owned_globs = (
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/etc/gshadow",
        "/etc/subuid",
        "/etc/subgid",
        "/root/.ssh/authorized_keys",
        "/home/*/.ssh/authorized_keys",
        "/etc/sudoers.d/*",
    )
    # Of those, the files whose mode, owner and group this kind keeps itself; the files kind
    # reports the metadata of the others (a chmod of /etc/shadow).
    metadata_globs = (
        "/root/.ssh/authorized_keys",
        "/home/*/.ssh/authorized_keys",
        "/etc/sudoers.d/*",
    )
    # The directories too, so a new home, .ssh directory or sudo rule shows.
    watches = (
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/root/.ssh",
        "/root/.ssh/authorized_keys",
        "/home",
        "/home/*",
        "/home/*/.ssh",
        "/home/*/.ssh/authorized_keys",
        "/etc/sudoers.d",
        "/etc/sudoers.d/*",
    )

    def probe(self, params: dict[str, Any]) -> str:
        return PROBE

    def parse(self, output: str) -> UsersState:
        sec = split_sections(output)
        groups: dict[str, Group] = {}
        members: dict[str, list[str]] = {}
        gid_name: dict[int, str] = {}
        for line in sec.get("group", []):
            p = line.split(":")
            if len(p) >= 4:
                groups[p[0]] = Group(gid=int(p[2]))
                gid_name.setdefault(int(p[2]), p[0])  # the first name of a gid wins, as getgrgid
                for m in filter(None, p[3].split(",")):
                    members.setdefault(m, []).append(p[0])
        shadow = {}
        for line in sec.get("shadow", []):
            name, _, pw = line.partition(":")
            shadow[name] = "set" if pw == "set" else "none" if pw == "" else "locked"
        users: dict[str, User] = {}
        for line in sec[""]:
            p = line.split(":")
            if len(p) >= 7:
                users[p[0]] = User(
                    uid=int(p[2]),
                    group=gid_name.get(int(p[3]), p[3]),
                    groups=sorted(members.get(p[0], [])),
                    home=p[5],
                    shell=p[6],
                    comment=p[4],
                    password=shadow.get(p[0], "locked"),
                )
        files: dict[str, Secret] = {}
        blobs: dict[str, bytes] = {}
        for line in sec.get("files", []):
            p = line.split("\t")
            if len(p) == 5:
                data = base64.b64decode(p[4])
                sha = hashlib.sha256(data).hexdigest()
                blobs[sha] = data
                files[p[0]] = Secret(owner=p[1], group=p[2], mode=int(p[3], 8), sha256=sha)
        return UsersState(users=users, groups=groups, files=files).carrying(blobs)

    def diff(
        self, before: UsersState, after: UsersState, ctx: base.DiffContext
    ) -> list[base.Change]:
        changes: list[base.Change] = []
        packages_before, packages = ctx.before.state("packages"), ctx.after.state("packages")
        files_before, files = ctx.before.state("files").entries, ctx.after.state("files").entries
        for kind, b_map, a_map in (
            ("group", before.groups, after.groups),
            ("user", before.users, after.users),
        ):
            for name in base.changed_keys(b_map, a_map):
                b, a = b_map.get(name), a_map.get(name)
                ch = _change(self.name, f"{kind} {name}", b, a)
                if kind == "user" and isinstance(a, User):
                    ch.details = _user_details(b, a, before.groups, after.groups)  # type: ignore
                    # Whether making the account made its home (`useradd -r` makes none), so
                    # the export makes one exactly when the sandbox got one.
                    made = a.home in files and a.home not in files_before
                    ch.after["home_made"] = made  # type: ignore[index]
                elif kind == "group" and isinstance(a, Group):
                    ch.details = _group_details(name, b, a)  # type: ignore
                # Credited to a package only on evidence: a package installed or upgraded in
                # between whose maintainer scripts or sysusers.d files name it. Anything else
                # (a `useradd -r` seconds after an apt run) is the agent's and exported.
                makers = packages.account_makers(name, packages_before) if b is None else []
                if makers:
                    ch.brought_by(f"made by the package {', '.join(makers)}, which installs it")
                if kind == "user" and a is not None and a.password == "set":
                    ch.note = "a password is set in the sandbox; it is not exported"
                changes.append(ch)
        for path in base.changed_keys(before.files, after.files):
            b, a = before.files.get(path), after.files.get(path)
            ch = _change(self.name, path, b, a)
            if a is not None and path.startswith("/etc/sudoers.d/"):
                ch.details.insert(0, "WARNING: sudo rules (grant root rights; read the rule)")
            new = ctx.blob(a.sha256) if a else None
            old = ctx.blob(b.sha256) if b else b""
            if a is not None and new is None:
                ch.exported, ch.note = False, base.CONTENT_NOT_KEPT
            if new is not None and old is not None:
                ch.text_diff = base.unified_diff(path, old if b else None, new)
            changes.append(ch)
        return changes

    def export(self, changes: list[base.Change], ctx: base.ExportContext) -> base.TaskBundle:
        # Names, groups, homes, shells, comments and paths are the guest's: tagged !unsafe.
        bundle = base.TaskBundle()
        done = [c for c in changes if c.exported]
        for c in (c for c in done if c.key.startswith("group ")):
            name = unsafe(c.key.removeprefix("group "))
            args = (
                {"name": name, "state": "absent"}
                if c.action == "removed"
                else {"name": name, "gid": int(c.after["gid"]), "state": "present"}
            )
            bundle.tasks.append({"name": _named(c.key), "ansible.builtin.group": args})
        for c in (c for c in done if c.key.startswith("user ")):
            name = unsafe(c.key.removeprefix("user "))
            if c.action == "removed":
                args = {"name": name, "state": "absent"}
            else:
                a = c.after
                args = {
                    "name": name,
                    "uid": int(a["uid"]),
                    "group": unsafe(a["group"]),
                    "groups": unsafe_each(a["groups"]),
                    "append": False,
                    "home": unsafe(a["home"]),
                    "shell": unsafe(a["shell"]),
                    "comment": unsafe(a["comment"]),
                    "state": "present",
                    "create_home": bool(a.get("home_made", a["home"].startswith("/home/"))),
                }
                if int(a["uid"]) == 0:
                    args["non_unique"] = True  # root has uid 0 already
                if a["password"] == "locked":
                    args["password_lock"] = True
            bundle.tasks.append({"name": _named(c.key), "ansible.builtin.user": args})
        for c in (c for c in done if c.key.startswith("/")):
            path = unsafe(c.key)
            if c.action == "removed":
                bundle.tasks.append(removal_task(c.key))
                continue
            a = c.after
            owner = {"owner": unsafe(a["owner"]), "group": unsafe(a["group"])}
            if c.key.endswith("/authorized_keys"):
                bundle.tasks.append(
                    {
                        "name": task_name(f"Directory of {c.key}"),
                        "ansible.builtin.file": {
                            "path": unsafe(c.key.rsplit("/", 1)[0]),
                            "state": "directory",
                            "mode": "0700",
                            **owner,
                        },
                    }
                )
            copy: dict[str, Any] = {
                "src": content(c.key, a["sha256"]),
                "dest": path,
                **owner,
                "mode": f"{int(a['mode']):04o}",
            }
            if c.key.startswith("/etc/sudoers.d/"):
                copy["validate"] = "visudo -cf %s"
            bundle.tasks.append({"name": task_name(f"Write {c.key}"), "ansible.builtin.copy": copy})
        return bundle


def _named(key: str) -> str:
    """A task name from a change's key ("user deploy" → "User deploy")."""
    return task_name(key[:1].upper() + key[1:])


# Groups whose members are root in all but name: sudo rights, logs, password hashes, raw disks.
PRIVILEGED_GROUPS = ("sudo", "adm", "root", "wheel", "shadow", "disk")


def _user_details(
    b: User | None, a: User, old_groups: dict[str, Group], groups: dict[str, Group]
) -> list[str]:
    """What a reviewer must see of an added or changed account: who it is and what it may do."""
    lines: list[str] = []
    if a.uid == 0:
        lines.append("WARNING: uid 0 (root-equivalent)")
    primary = groups.get(a.group)
    if primary is not None and primary.gid == 0:
        lines.append("WARNING: primary group has gid 0 (root's group)")
    privileged = [g for g in PRIVILEGED_GROUPS if g == a.group or g in a.groups]
    if privileged:
        lines.append(f"WARNING: member of {', '.join(privileged)} (privileged groups)")

    def gid(u: User, known: dict[str, Group]) -> str:
        g = known.get(u.group)
        return f"{g.gid} ({u.group})" if g is not None else u.group

    shown = (
        ("uid", str(a.uid), str(b.uid) if b else None),
        ("gid", gid(a, groups), gid(b, old_groups) if b else None),
        ("groups", ", ".join(a.groups) or "(none)", ", ".join(b.groups) or "(none)" if b else None),
        ("shell", a.shell, b.shell if b else None),
        ("home", a.home, b.home if b else None),
    )
    for label, new, old in shown:
        lines.append(
            f"{label} {old} → {new}" if old is not None and old != new else f"{label} {new}"
        )
    for label, new, old in (
        ("comment", a.comment, b.comment if b else ""),
        ("password", a.password, b.password if b else ""),
    ):
        if old != new and (b is not None or new):
            lines.append(f"{label} {old} → {new}" if b is not None else f"{label} {new}")
    return lines


def _group_details(name: str, b: Group | None, a: Group) -> list[str]:
    lines = ["WARNING: gid 0 (root's group)"] if a.gid == 0 and name != "root" else []
    lines.append(f"gid {b.gid} → {a.gid}" if b is not None and b.gid != a.gid else f"gid {a.gid}")
    return lines


def _change(kind: str, key: str, b: BaseModel | None, a: BaseModel | None) -> base.Change:
    bd, ad = (b.model_dump() if b else None), (a.model_dump() if a else None)
    details = []
    if bd and ad:
        details = [f"{k} {bd[k]} → {ad[k]}" for k in ad if bd.get(k) != ad[k] and k != "sha256"]
        if bd.get("sha256") != ad.get("sha256") and "sha256" in ad:
            details.append("content changed")
    action = "added" if b is None else "removed" if a is None else "modified"
    return base.Change(kind=kind, key=key, action=action, before=bd, after=ad, details=details)
