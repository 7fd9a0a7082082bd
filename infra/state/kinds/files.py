"""Files: the root filesystem's entries (type, mode, owner, group, size, sha256, link target).

Paths that another kind owns (users' passwd, services' enablement links, crontabs, sysctl
files), pristine package files and files a package's maintainer scripts made are left to their
kinds; edited package files are caught by comparing with dpkg's own checksums.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import shlex
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from infra.errors import FluidError, GuestDataRefused
from infra.state import base, noise, owned_metadata
from infra.state.blobs import SHA256, BlobTooLarge, LargeContent, secret_reason, valid_sha
from infra.state.playbook_files import content
from infra.state.playbook_yaml import removal_task, task_name, unsafe

PROBE_PATH = f"{base.STAGING}/files_probe.py"
# The hash index stays in the guest (a skipped tree on its disk) once sent, per probe version.
INDEX_DIR = "/var/lib/fluid/index"
# The journal's request directory is on the root filesystem it watches (and in a skipped tree);
# its answers go to a tmpfs it does not.
REQUESTS = "/var/lib/fluid/journal"
ANSWERS = "/run/fluid-journal"
CONTENT_ROOTS = (
    "/etc/",
    "/root/",
    "/home/",
    "/srv/",
    "/opt/",
    "/usr/local/",
    "/var/www/",
    "/var/spool/cron/",
)
COMPARED = ("type", "mode", "owner", "group", "sha256", "target")
# A file larger than this is shown as binary with its size: a diff never reads it whole.
TEXT_DIFF_MAX = 1 << 20
SECRETS = {s: s for s in ("password hashes", "private key material")}
TYPES = {"f": "file", "d": "directory", "l": "symlink", "o": "other"}


class FileEntry(BaseModel):
    """One filesystem entry."""

    path: str
    type: Literal["file", "directory", "symlink", "other"]
    mode: int
    owner: str
    group: str
    size: int | None = None
    # Checked again whenever a stored capture is loaded: a hash names a blob, a host path.
    sha256: str | None = Field(default=None, pattern=f"^{SHA256.pattern}$")
    target: str | None = None
    package: str | None = None
    pristine: bool | None = None
    # The journal's word on who last wrote it: dpkg (or a process dpkg started), or anyone
    # else; None when no journal watched it change (a full walk).
    writer: Literal["dpkg", "agent"] | None = None
    mtime_ns: int = 0
    stat_key: list[int] | None = None
    secret: str | None = Field(default=None, description="what its content holds, never kept")

    def compared(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COMPARED}


class FilesState(base.CarriesBlobs):
    """Every entry of the root filesystem outside the skipped trees."""

    entries: dict[str, FileEntry]
    _large: dict[str, LargeContent] = PrivateAttr(default_factory=dict)

    def hash_index(self) -> dict[str, list[Any]]:
        """The hash cache the guest probe reuses for unchanged files."""
        return {
            p: [*e.stat_key, e.sha256, bool(e.pristine)]
            for p, e in self.entries.items()
            if e.stat_key and e.sha256
        }


@cache
def _probe_code() -> bytes:
    return (resources.files("infra.state") / "guest" / "files_probe.py").read_bytes()


@cache
def probe_version() -> str:
    """A short hash of the guest probe: it names the hash index and the journal's directories."""
    return hashlib.sha256(_probe_code()).hexdigest()[:12]


def _guest_index() -> str:
    return f"{INDEX_DIR}/{probe_version()}.json.gz"


def _token(output: str | None) -> str | None:
    """The journal token a completed output ends with (None: it has none)."""
    if not output:
        return None
    meta = output.split("\n", 2)
    return json.loads(meta[2]).get("token") if len(meta) > 2 and meta[2].strip() else None


def _shown(value: object, limit: int = 100) -> str:
    """A guest value quoted for an error message, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _content(path: str, encoded: object, sha: str | None) -> bytes:
    """A file's content as the probe sent it, decoded and hashed again; it must match `sha`."""
    if sha is None:
        raise GuestDataRefused(f"the files probe sent content for {path!r} without its sha256")
    try:
        data = base64.b64decode(encoded, validate=True)  # type: ignore[arg-type]
    except (binascii.Error, TypeError, ValueError) as err:
        raise GuestDataRefused(
            f"the files probe sent content for {path!r} that is not base64 ({err})"
        ) from err
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha:
        raise GuestDataRefused(
            f"the files probe sent content for {path!r} whose sha256 is {actual}, not the "
            f"{sha} it reported"
        )
    return data


def _large(path: str, sha: str | None, size: object) -> LargeContent:
    """A file the probe hashed and asks the host to stream in (its content was too large to
    travel inline)."""
    if sha is None or type(size) is not int or size < 0:
        raise GuestDataRefused(
            f"the files probe offered the content of {path!r} without its sha256 and size"
        )
    return LargeContent(path=path, sha256=sha, size=size)


def _small_blob(ctx: base.DiffContext, sha: str | None) -> bytes | None:
    """A blob of at most TEXT_DIFF_MAX bytes, to diff as text (None: not stored, or larger)."""
    try:
        return ctx.blobs.get(sha, limit=TEXT_DIFF_MAX)
    except BlobTooLarge:
        return None


def _bytes(n: int) -> str:
    """A size for people: exact, and in MiB when it is large."""
    return f"{n} bytes" if n < 1 << 20 else f"{n} bytes ({n / (1 << 20):.1f} MiB)"


def _is_text(data: bytes) -> bool:
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _mode(m: int) -> str:
    return f"{m:04o}"


class Files(base.ResourceKind[FilesState]):
    """The files kind."""

    name = "files"
    order = 40
    state_model = FilesState
    remembers = True
    # The probe needs the image's hash index in the guest, and 1.3 MB through the guest agent
    # takes minutes on TCG. A spare's first capture, taken while it waits, is its base instead.
    remembered_at_boot = False

    def uploads(self, params: dict[str, Any]) -> dict[str, bytes]:
        out = {PROBE_PATH: _probe_code()}
        # Only a sandbox's first capture sends the index (0.4 MB gzipped as stored; its 1.3 MB of
        # JSON would cross the user-mode network slower than gunzip costs). It stays on the
        # guest's disk for a later full walk (a journal that died); the journal's deltas hash
        # only what changed and never read it. A guest reverted to before its first capture
        # lacks it: a full walk there hashes every file, slower but the same listing.
        if params.get("index") and (params.get("previous") or {}).get(self.name) is None:
            out[_guest_index()] = params["index"]
        return out

    def probe(self, params: dict[str, Any]) -> str:
        # The guest's journal (the probe run with --serve, left running) answers with only what
        # changed since the token of the previous capture; without one, or when it cannot say
        # (it died, the guest was rolled back past that token), it lists everything. Should the
        # journal not answer at all, the probe lists everything itself.
        token = secrets.token_hex(8)
        args = {
            "skip": list(noise.SKIP_TREES),
            "content": list(CONTENT_ROOTS),
            "index": _guest_index(),
            "max": params.get("max_content", 4 << 20),
            "token": token,
            "since": _token((params.get("previous") or {}).get(self.name)),
        }
        quoted = shlex.quote(json.dumps(args))
        # Directories of this probe's version: a journal left by another fluid is not asked.
        version = probe_version()
        requests, answers = f"{REQUESTS}/{version}", f"{ANSWERS}/{version}"
        answer = f"{answers}/{token}.done"
        serve = f"python3 {PROBE_PATH} --serve {requests} {answers}"
        # Shell builtins where they do: every process started costs ~30 ms on a TCG guest.
        return (
            f"[ -d {answers} ] || mkdir -p {requests} {answers}\n"
            f"printf '%s' {quoted} > {requests}/req-{token}\n"
            # The journal wrote its pid and start time (field 22 of /proc/PID/stat): both
            # must match, or a recycled pid would have us wait for an answer never coming.
            f"pid=; started=; read -r pid started < {answers}/pid\n"
            'line=; read -r line < /proc/"$pid"/stat; set -- $line\n'
            'if [ -z "$started" ] || [ "${22}" != "$started" ]; then\n'
            f"  setsid {serve} </dev/null >>{answers}/log 2>&1 &\n"
            "  pid=$!\n"
            "fi\n"
            # Waiting is a `read` on the journal's FIFO, which it writes a line to after each
            # answer: a builtin, woken at once (a `sleep` is a process the one vCPU must run).
            # Until the FIFO exists (a journal just started) the shell sleeps instead.
            "n=0; woken=\n"
            f'while [ ! -e {answer} ] && kill -0 "$pid" && [ $n -lt 5000 ]; do\n'
            f'  if [ -z "$woken" ] && [ -p {answers}/wake ]; then\n'
            f"    exec 9<>{answers}/wake; woken=1\n"
            "  fi\n"
            '  if [ -n "$woken" ]; then read -r -t 0.2 -u 9 _; else sleep 0.1; fi\n'
            "  n=$((n + 1))\n"
            "done\n"
            '[ -z "$woken" ] || exec 9<&-\n'
            # The journal removes answers once they are a minute old.
            f"if [ -e {answer} ]; then cat {answer}\n"
            f"else rm -f {requests}/req-{token}; python3 {PROBE_PATH} {quoted}; fi"
        )

    def complete(self, output: str, previous: str | None) -> str:
        lines = output.split("\n", 2)
        meta = json.loads(lines[2]) if len(lines) > 2 and lines[2].strip() else {}
        if not meta.get("delta"):
            return output
        if previous is None:
            raise FluidError("the files journal answered with changes to a capture fluid lacks")
        old = previous.split("\n", 2)
        entries = {e["p"]: e for e in json.loads(old[1])}
        for e in entries.values():
            e.pop("c", None)  # sent with the previous capture and kept in the blob store then
        replaced = (*meta["gone"], *meta["trees"])
        if replaced:
            exact, under = set(replaced), tuple(f"{p}/" for p in replaced)
            for path in [p for p in entries if p in exact or p.startswith(under)]:
                del entries[path]
        for e in json.loads(lines[1]):
            # A path listed again without events of its own (a child changed, dpkg's lists
            # moved) keeps the journal's earlier word on who wrote it.
            old_entry = entries.get(e["p"])
            if "w" not in e and old_entry and "w" in old_entry:
                e["w"] = old_entry["w"]
            entries[e["p"]] = e
        listed = json.dumps(list(entries.values()), separators=(",", ":"))
        return "\n".join([lines[0], listed, json.dumps({"token": meta["token"], "delta": False})])

    def parse(self, output: str) -> FilesState:
        lines = output.splitlines()
        names = json.loads(lines[0])
        users = {int(k): v for k, v in names["users"].items()}
        groups = {int(k): v for k, v in names["groups"].items()}
        if len(lines) < 2:
            raise FluidError("the files probe stopped before listing any file")
        entries: dict[str, FileEntry] = {}
        blobs: dict[str, bytes] = {}
        large: dict[str, LargeContent] = {}
        # The guest writes all of this: a hash is a blob's name (a host path) and content is
        # kept under it, so each hash is checked and each content hashed again here.
        path = None
        try:
            for e in json.loads(lines[1]):
                path, sha = e["p"], e.get("h")
                if sha is not None and not valid_sha(sha):
                    raise GuestDataRefused(
                        f"the files probe gave {_shown(sha)} as the sha256 of {path!r}: not 64 "
                        "lowercase hex digits"
                    )
                # The probe says why it sent no content; only fluid's own words are kept.
                secret = SECRETS.get(e["x"], SECRETS["private key material"]) if "x" in e else None
                if "c" in e:
                    data = _content(path, e["c"], sha)
                    secret = secret_reason(path, data) or secret
                    if not secret:
                        blobs[sha] = data
                elif "L" in e and not secret and not secret_reason(path, None):
                    large.setdefault(sha, _large(path, sha, e.get("s")))
                entries[path] = FileEntry(
                    path=path,
                    type=TYPES[e["k"]],
                    mode=e["m"],
                    owner=users.get(e["u"], str(e["u"])),
                    group=groups.get(e["g"], str(e["g"])),
                    size=e.get("s"),
                    sha256=sha,
                    target=e.get("l"),
                    package=e.get("o"),
                    pristine=e.get("pp"),
                    writer=e.get("w"),
                    mtime_ns=e.get("t", 0),
                    stat_key=e.get("i"),
                    secret=secret_reason(path, None) or secret,
                )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise GuestDataRefused(
                f"the files probe's answer is malformed (at {_shown(path)}): "
                f"{type(err).__name__}: {_shown(str(err))}"
            ) from err
        state = FilesState(entries=entries).carrying(blobs)
        state._large = large
        return state

    def take_large(self, state: FilesState) -> list[LargeContent]:
        large, state._large = state._large, {}
        return list(large.values())

    # --- diff ----------------------------------------------------------------------------

    def diff(
        self, before: FilesState, after: FilesState, ctx: base.DiffContext
    ) -> list[base.Change]:
        ignore = tuple(ctx.ignore)
        owned, metadata_kept = owned_metadata.globs()
        packages_before, packages = ctx.before.state("packages"), ctx.after.state("packages")
        gone_packages = set(packages_before.installed) - set(packages.installed)
        scripted = packages.scripted_paths(packages_before)
        managed = packages.managed_links(packages_before)
        old_users, new_users = ctx.before.state("users").users, ctx.after.state("users").users
        homes = {u.home for n, u in new_users.items() if n not in old_users and u.home != "/"}
        made = _package_made_dirs(before, after, scripted)
        changes: list[base.Change] = []
        # deepdiff per directory first, then within the directories that differ (base.py).
        parent = lambda p: p.rpartition("/")[0]  # noqa: E731
        for path in base.changed_keys(before.entries, after.entries, FileEntry.compared, parent):
            if noise.is_noise(path, ignore):
                continue
            b, a = before.entries.get(path), after.entries.get(path)
            if owned and noise.is_noise(path, owned):
                # Another kind owns the content; its mode, owner, group or link target is
                # reported here, once, unless that kind keeps them itself: when it changed,
                # or on a new path when a module would not create it so unasked.
                if (
                    a
                    and not noise.is_noise(path, metadata_kept)
                    and not (b is None and path in made)
                    and not _package_made(a, b, scripted)
                    and (owned_metadata.of(b) != owned_metadata.of(a) if b else True)
                    and (b is not None or not owned_metadata.is_default(a))
                ):
                    changes.append(owned_metadata.change(path, b, a))
                continue
            if a is not None and (_package_made(a, b, scripted) or path in made):
                continue
            if path in managed and (a or b).type == "symlink":  # type: ignore[union-attr]
                continue  # update-alternatives in auto mode, run by a package's scripts
            if a is not None and b is None and _made_by_useradd(path, a, after, homes):
                continue
            if a is None and b is not None and b.package in gone_packages:
                continue
            changes.append(self._change(path, b, a, ctx))
        return changes

    def _change(
        self, path: str, b: FileEntry | None, a: FileEntry | None, ctx: base.DiffContext
    ) -> base.Change:
        action = "added" if b is None else "removed" if a is None else "modified"
        ch = base.Change(
            kind=self.name,
            key=path,
            action=action,
            before=b.compared() if b else None,
            after=a.compared() if a else None,
        )
        if b and a:
            for field, label in (
                ("type", "type"),
                ("mode", "mode"),
                ("owner", "owner"),
                ("group", "group"),
                ("target", "symlink target"),
            ):
                old, new = getattr(b, field), getattr(a, field)
                if old != new:
                    if field == "mode":
                        old, new = _mode(old), _mode(new)
                    ch.details.append(f"{label} {old} → {new}")
            if b.sha256 != a.sha256 and a.type == "file":
                ch.details.append("content changed")
        elif a:
            ch.details.append(
                f"{a.type} {_mode(a.mode)} {a.owner}:{a.group}"
                + (f" → {a.target}" if a.target else "")
            )
        if a and a.type == "file" and not (b and b.type == "file" and b.sha256 == a.sha256):
            # Sizes first: a large blob is never read whole to be shown (it is binary here).
            size = ctx.blobs.size(a.sha256)
            old_size = ctx.blobs.size(b.sha256) if b and b.type == "file" else 0
            if a.secret:
                ch.note = (
                    f"holds {a.secret}: not exported (its content is never kept or shown); "
                    "provision it apart from the playbook"
                )
                ch.exported = False
            elif size is None:
                ch.note = (
                    f"content not captured: {a.size} bytes, over the per-file limit of a capture "
                    "(FLUID_CAPTURE_MAX_FILE); not exported, raise it and capture again"
                )
                ch.exported = False
            elif max(size, old_size or 0) > TEXT_DIFF_MAX:
                ch.binary = True
            else:
                new = _small_blob(ctx, a.sha256)
                old = _small_blob(ctx, b.sha256) if b and b.type == "file" else b""
                if new is None or not _is_text(new) or (old is not None and not _is_text(old)):
                    ch.binary = True
                elif old is not None and old != new:
                    ch.text_diff = base.unified_diff(path, old if b else None, new)
            if ch.binary:
                ch.details.append(f"binary content, {_bytes(size or 0)}")
        return ch

    # --- export --------------------------------------------------------------------------

    def export(self, changes: list[base.Change], ctx: base.ExportContext) -> base.TaskBundle:
        # Paths, link targets, owners and groups are the guest's: tagged !unsafe. Modes and
        # states are fluid's and stay plain; export names each copied content in files/.
        bundle = base.TaskBundle()
        services = ctx.services_with_config()
        exported = [c for c in changes if c.exported]
        # After every kind's tasks: the path may be one another kind's task creates.
        bundle.last = [
            owned_metadata.task(c) for c in exported if owned_metadata.is_metadata_only(c)
        ]
        exported = [c for c in exported if not owned_metadata.is_metadata_only(c)]
        # Directories first (parents before children), then everything else; removals last.
        creates = sorted(
            (c for c in exported if c.action != "removed"),
            key=lambda c: (c.after["type"] != "directory", c.key),
        )
        for c in creates:
            a = c.after
            path = unsafe(c.key)
            ownership = {"owner": unsafe(a["owner"]), "group": unsafe(a["group"])}
            if a["type"] == "directory":
                task = {
                    "ansible.builtin.file": {
                        "path": path,
                        "state": "directory",
                        "mode": _mode(a["mode"]),
                        **ownership,
                    }
                }
            elif a["type"] == "symlink":
                task = {
                    "ansible.builtin.file": {
                        "path": path,
                        "src": unsafe(a["target"]),
                        "state": "link",
                        "force": True,
                        "follow": False,
                        **ownership,
                    }
                }
            elif a["type"] == "file" and (
                c.action == "added"
                or a["sha256"] != c.before.get("sha256")
                or c.before.get("type") != "file"
            ):
                task = {
                    "ansible.builtin.copy": {
                        "src": content(c.key, a["sha256"]),
                        "dest": path,
                        "mode": _mode(a["mode"]),
                        **ownership,
                    }
                }
            elif a["type"] == "file":
                task = {
                    "ansible.builtin.file": {"path": path, "mode": _mode(a["mode"]), **ownership}
                }
            else:
                continue
            verb = "Create" if c.action == "added" else "Update"
            task = {"name": task_name(f"{verb} {c.key}"), **task}
            restarted = [
                s for s, roots in services.items() if any(c.key.startswith(r) for r in roots)
            ]
            if restarted:
                task["notify"] = [task_name(f"Restart {s}") for s in restarted]
                for s in restarted:
                    bundle.handlers.append(
                        {
                            "name": task_name(f"Restart {s}"),
                            "ansible.builtin.systemd_service": {
                                "name": unsafe(s),
                                "state": "restarted",
                            },
                        }
                    )
            bundle.tasks.append(task)
        for c in sorted(
            (c for c in exported if c.action == "removed"), key=lambda c: c.key, reverse=True
        ):
            bundle.tasks.append(removal_task(c.key))
        return bundle


def _package_made(a: FileEntry, b: FileEntry | None, scripted: set[str]) -> bool:
    """True for entries a package accounts for, on evidence (never on timing): the journal saw
    dpkg or a process it started write it last; or dpkg's lists ship it (a file with dpkg's own
    checksum) or a maintainer script of a package installed in between names it, and nothing
    about it but its content changed. Without the journal (a full walk after it died) only the
    lists and the scripts count."""
    if a.writer == "dpkg":
        return True
    if b is not None and owned_metadata.of(a) != owned_metadata.of(b):
        return False  # a chmod, chown or re-pointed link outside dpkg: someone decided it
    if a.package and (a.type != "file" or a.pristine):
        return True
    return b is None and a.path in scripted


def _package_made_dirs(before: FilesState, after: FilesState, scripted: set[str]) -> set[str]:
    """New directories holding something a package made: the package made them too (the
    evidence for a file often names only the file; its new parents came with it)."""
    made: set[str] = set()
    for path, a in after.entries.items():
        if path in before.entries or not _package_made(a, None, scripted):
            continue
        parent = path.rsplit("/", 1)[0]
        while parent and parent not in before.entries and parent not in made:
            made.add(parent)
            parent = parent.rsplit("/", 1)[0]
    return made


def _made_by_useradd(path: str, a: FileEntry, after: FilesState, homes: set[str]) -> bool:
    """A new user's home and the /etc/skel copies in it: the user task makes those."""
    if path in homes:
        return True
    for home in homes:
        if path.startswith(home + "/"):
            skel = after.entries.get("/etc/skel" + path[len(home) :])
            return skel is not None and skel.sha256 == a.sha256 and skel.type == a.type
    return False
