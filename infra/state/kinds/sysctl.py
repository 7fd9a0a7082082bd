"""Sysctl: its configuration files (/etc/sysctl.conf, /etc/sysctl.d), not runtime values."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from pydantic import BaseModel

from infra.state import base
from infra.state.playbook_files import content
from infra.state.playbook_yaml import removal_task, task_name, unsafe

# The handler that loads the files: fluid's name, plain in the playbook.
APPLY = "Apply sysctl settings"


class SysctlFile(BaseModel):
    mode: int
    owner: str
    group: str
    sha256: str
    settings: dict[str, str]


class SysctlState(base.CarriesBlobs):
    files: dict[str, SysctlFile]


def _settings(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip().lstrip("-")] = v.strip()
    return out


class Sysctl(base.ResourceKind[SysctlState]):
    """The sysctl kind."""

    name = "sysctl"
    order = 51
    state_model = SysctlState
    owned_globs = ("/etc/sysctl.conf", "/etc/sysctl.d/*")
    metadata_globs = owned_globs  # each file's mode, owner and group are kept here too
    # The directory too, so an added or removed file shows; passwd/group name the owners.
    watches = ("/etc/sysctl.conf", "/etc/sysctl.d", "/etc/sysctl.d/*", "/etc/passwd", "/etc/group")

    def probe(self, params: dict[str, Any]) -> str:
        return (
            "for f in /etc/sysctl.conf /etc/sysctl.d/*; do\n"
            '  [ -f "$f" ] || continue\n'
            '  stat --printf \'%n\\t%a\\t%U\\t%G\\t\' "$f"; base64 -w0 "$f"; echo\n'
            "done"
        )

    def parse(self, output: str) -> SysctlState:
        files, blobs = {}, {}
        for line in output.splitlines():
            p = line.split("\t")
            if len(p) != 5:
                continue
            data = base64.b64decode(p[4])
            sha = hashlib.sha256(data).hexdigest()
            blobs[sha] = data
            files[p[0]] = SysctlFile(
                mode=int(p[1], 8),
                owner=p[2],
                group=p[3],
                sha256=sha,
                settings=_settings(data.decode(errors="replace")),
            )
        return SysctlState(files=files).carrying(blobs)

    def diff(
        self, before: SysctlState, after: SysctlState, ctx: base.DiffContext
    ) -> list[base.Change]:
        changes = []
        for path in base.changed_keys(before.files, after.files):
            b, a = before.files.get(path), after.files.get(path)
            action = "added" if b is None else "removed" if a is None else "modified"
            bs, as_ = (b.settings if b else {}), (a.settings if a else {})
            details = [
                f"{k} = {as_.get(k, '(unset)')}"
                for k in sorted(set(bs) | set(as_))
                if bs.get(k) != as_.get(k)
            ]
            ch = base.Change(
                kind=self.name,
                key=path,
                action=action,
                before=b.model_dump() if b else None,
                after=a.model_dump() if a else None,
                details=details,
            )
            old = ctx.blob(b.sha256) if b else b""
            new = ctx.blob(a.sha256) if a else b""
            if new is None:
                ch.exported, ch.note = False, base.CONTENT_NOT_KEPT
            if old is not None and new is not None:
                ch.text_diff = base.unified_diff(path, old if b else None, new if a else None)
            changes.append(ch)
        return changes

    def export(self, changes: list[base.Change], ctx: base.ExportContext) -> base.TaskBundle:
        # File names, owners and groups are the guest's: tagged !unsafe. The contents (keys and
        # values) travel as bytes in files/, never through YAML.
        bundle = base.TaskBundle()
        for c in (c for c in changes if c.exported):
            path = unsafe(c.key)
            if c.action == "removed":
                bundle.tasks.append(removal_task(c.key))
                continue
            a = c.after
            bundle.tasks.append(
                {
                    "name": task_name(f"Write {c.key}"),
                    "notify": APPLY,
                    "ansible.builtin.copy": {
                        "src": content(c.key, a["sha256"]),
                        "dest": path,
                        "owner": unsafe(a["owner"]),
                        "group": unsafe(a["group"]),
                        "mode": f"{int(a['mode']):04o}",
                    },
                }
            )
        if bundle.tasks:
            # No ansible.builtin module applies sysctl files; the runtime reload is a command.
            # Run only when a file changed, so it always reports a change.
            bundle.handlers.append(
                {"name": APPLY, "ansible.builtin.command": "sysctl --system", "changed_when": True}
            )
            bundle.flagged.append(f"handler '{APPLY}' runs `sysctl --system`")
        return bundle
