"""Runs inside the guest (python3, stdlib only): list the root filesystem as JSON, once, or as a
journal that answers each later capture with only what changed since the one before.

  files_probe.py ARGS                       list every entry once and exit (ARGS: below)
  files_probe.py --serve REQUESTS ANSWERS   the journal: watch the root filesystem with
        fanotify and answer each request file REQUESTS/req-TOKEN (the JSON object below) with
        ANSWERS/TOKEN.done; it runs for the guest's lifetime (REQUESTS must be on the root
        filesystem, where the journal sees the file written; ANSWERS should not be). Both are
        directories of one probe version: a journal stops those of other versions.

The JSON object:
  skip      directories not walked (pseudo and volatile trees),
  index     path of a gzipped JSON hash cache
            {path: [size, mtime_ns, ctime_ns, ino, sha256, pristine]},
            so only files whose metadata changed are hashed again,
  content   directories whose small files are always sent (a full capture's config trees),
  max       largest file whose content is sent,
  token     (requests) names this answer, so a later request can ask what changed since,
  since     (requests) the token of the capture the host builds on; null for everything.
Output: line 1 names users and groups, line 2 is a JSON array of entries, line 3 is
{"token", "delta", "gone", "trees"}. A full answer lists every entry; a delta lists the entries
changed since `since`, the paths that are gone and the directories listed anew, subtree and all.
A file's content is sent (base64) when it changed since the index and is not a pristine package
file, so the host can show text diffs and export it byte for byte; never for password hashes or
private keys, whose entry says why in "x" instead. A file larger than `max` is marked "L" in
place of its content: the host streams it in afterwards and checks it against "h". An entry
the journal saw written says by whom in "w": "dpkg" (dpkg or a process it started: a
maintainer script, a trigger) or "agent" (any other process, or one gone before it was asked).
"""

import base64
import ctypes
import fcntl
import glob
import grp
import gzip
import hashlib
import json
import os
import pwd
import re
import select
import stat
import struct
import sys
import time


def dpkg_maps():
    """Which package owns each path, and dpkg's md5 of each package file."""
    # With merged /usr, dpkg lists /lib/x while the walk finds /usr/lib/x: map both spellings.
    # Keyed by top-level directory: one dict lookup per dpkg line (tens of thousands of lines).
    aliases = {}
    for name in os.listdir("/"):
        top = "/" + name
        if os.path.islink(top):
            aliases[top] = os.path.realpath(top)

    def canonical(path):
        cut = path.find("/", 1)
        real = aliases.get(path[:cut]) if cut > 0 else None
        return real + path[cut:] if real else path

    def lines(pattern):
        # The journal reads these between dpkg runs: a package's files may go mid-read.
        for path in glob.glob(pattern):
            try:
                with open(path, errors="surrogateescape") as f:
                    yield path, f.read().splitlines()
            except FileNotFoundError:
                continue

    owner = {}
    for lst, listed in lines("/var/lib/dpkg/info/*.list"):
        pkg = os.path.basename(lst)[:-5].split(":")[0]
        for line in listed:
            owner.setdefault(canonical(line), pkg)
    md5s = {}
    for _, listed in lines("/var/lib/dpkg/info/*.md5sums"):
        for line in listed:
            digest, _, name = line.partition("  ")
            md5s[canonical("/" + name)] = digest
    in_conffiles = False
    with open("/var/lib/dpkg/status", errors="surrogateescape") as f:
        for line in f:
            if line.startswith("Conffiles:"):
                in_conffiles = True
            elif in_conffiles and line.startswith(" "):
                parts = line.split()
                if len(parts) >= 2:
                    md5s[canonical(parts[0])] = parts[1]
            else:
                in_conffiles = False
    return owner, md5s


def names():
    # The first name of an id wins, as with getpwuid and ls: a second uid-0 account appended
    # to /etc/passwd must not rename the owner of every file root owns.
    users = {p.pw_uid: p.pw_name for p in reversed(pwd.getpwall())}
    groups = {g.gr_gid: g.gr_name for g in reversed(grp.getgrall())}
    return json.dumps({"users": users, "groups": groups})


def digests(path, keep=0):
    """sha256 and md5 of a file, its content when it is at most `keep` bytes (else None), and
    whether a larger one holds private key material: one read gives all, so the content sent
    is the content hashed."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    key, tail = False, b""
    with open(path, "rb") as f:
        data = f.read(keep + 1) if keep else b""
        sha.update(data)
        md5.update(data)
        if not keep or len(data) > keep:
            # Searched as it is hashed (the host streams such a file in afterwards): the
            # overlap finds a key split between chunks, the substring test keeps it cheap.
            tail = data[-KEY_OVERLAP:]
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
                md5.update(chunk)
                mark = b"PRIVATE KEY-----"
                if not key and (mark in chunk or mark in tail + chunk[:KEY_OVERLAP]):
                    key = bool(PRIVATE_KEY.search(tail + chunk))
                tail = (tail + chunk[-KEY_OVERLAP:])[-KEY_OVERLAP:]
            key = key or bool(PRIVATE_KEY.search(data))
        # Hashing must not fill the page cache: a warm slot saves it with the guest's memory.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    small = data if keep and len(data) <= keep else None
    return sha.hexdigest(), md5.hexdigest(), small, key


# Content never sent, whatever asks for it: password hashes and private keys (the host drops
# them too; this only spares them the trip). Kept in step with infra/state/blobs.py.
SECRET_PATHS = re.compile(r"/etc/g?shadow-?|/etc/ssh/ssh_host_[^/]*_key")
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----")
KEY_OVERLAP = 128  # longer than any PRIVATE_KEY match


def secret_reason(path, data):
    if SECRET_PATHS.fullmatch(path):
        return "password hashes" if "shadow" in path else "private key material"
    if PRIVATE_KEY.search(data):
        return "private key material"
    return None


def skipped(path, skip):
    return any(path == t or path.startswith(t + "/") for t in skip)


class Listing:
    """Entries in the form the host parses; `delta` sends the content of every changed file."""

    def __init__(self, params, maps, delta=False):
        self.skip = set(params["skip"])
        self.content_roots = tuple(params.get("content", []))
        self.max_content = params.get("max", 4 << 20)
        self.owner, self.md5s = maps
        self.index = {}
        # A delta hashes only what changed, so it has no use for the index.
        if not delta and params.get("index") and os.path.exists(params["index"]):
            with gzip.open(params["index"], "rt") as f:
                self.index = json.load(f)
        self.changed_only = delta or bool(self.index)
        self.root_dev = os.lstat("/").st_dev
        # The journal's word on who last wrote each path (see Journal.writer_of); a walk
        # without the journal has none.
        self.writers = {}
        # Encoded once at the end: one json.dumps per entry costs more than the walk.
        self.entries = []

    def add(self, path, st):
        e = {
            "p": path,
            "m": stat.S_IMODE(st.st_mode),
            "u": st.st_uid,
            "g": st.st_gid,
            "t": st.st_mtime_ns,
        }
        pkg = self.owner.get(path)
        if pkg:
            e["o"] = pkg
        writer = self.writers.get(path)
        if writer:
            e["w"] = writer[0]
        if stat.S_ISLNK(st.st_mode):
            e["k"] = "l"
            e["l"] = os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            e["k"] = "d"
        elif stat.S_ISREG(st.st_mode):
            e["k"] = "f"
            e["s"] = st.st_size
            key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            cached = self.index.get(path)
            data, has_key = None, False
            if cached and cached[:4] == key:
                e["h"], e["pp"] = cached[4], cached[5]
                changed = False
            else:
                try:
                    e["h"], md5, data, has_key = digests(path, self.max_content)
                except OSError:
                    return
                e["pp"] = self.md5s.get(path) == md5
                changed = True
            # Content only with a fresh hash (an index hit is unchanged, so never wanted): the
            # bytes sent are the bytes hashed, even if the file changes meanwhile.
            want = changed if self.changed_only else path.startswith(self.content_roots)
            if want and not e["pp"] and data is not None:
                why = secret_reason(path, data)
                if why:
                    e["x"] = why
                else:
                    e["c"] = base64.b64encode(data).decode()
            elif want and not e["pp"] and changed:
                # Too large to travel inline: "L" asks the host to stream it in by its hash
                # (a file changed since fails the host's check and the capture is taken again).
                why = secret_reason(path, b"") or ("private key material" if has_key else None)
                if why:
                    e["x"] = why
                else:
                    e["L"] = 1
            e["i"] = key
        else:
            e["k"] = "o"
        self.entries.append(e)

    def walk(self, top):
        try:
            it = os.scandir(top)
        except OSError:
            return
        with it:
            items = sorted(it, key=lambda d: d.name)
        for d in items:
            path = d.path if top != "/" else "/" + d.name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if path in self.skip:
                continue
            self.add(path, st)
            if stat.S_ISDIR(st.st_mode) and st.st_dev == self.root_dev:
                self.walk(path)

    def text(self, meta):
        entries = json.dumps(self.entries, separators=(",", ":"))
        return f"{names()}\n{entries}\n{json.dumps(meta)}\n"


# --- the journal -----------------------------------------------------------------------------

FAN_CLOEXEC, FAN_UNLIMITED_QUEUE, FAN_REPORT_DFID_NAME = 0x1, 0x10, 0x400 | 0x800
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_MODIFY, FAN_ATTRIB, FAN_CLOSE_WRITE = 0x2, 0x4, 0x8
FAN_MOVED_FROM, FAN_MOVED_TO, FAN_CREATE, FAN_DELETE = 0x40, 0x80, 0x100, 0x200
FAN_Q_OVERFLOW, FAN_ONDIR = 0x4000, 0x40000000
WATCHED = (
    (FAN_MODIFY | FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE)
    | FAN_DELETE
    | FAN_ONDIR
)
ENTRY_EVENTS = FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO
INFO_DFID_NAME = 2
METADATA = struct.Struct("=IBBHQii")
INFO = struct.Struct("=BBH")
O_PATH = 0o10000000
REQUESTS = ANSWERS = ""  # set from the command line
KEPT_TOKENS = 16
MAX_LINEAGE = 50_000
DPKG = "/usr/bin/dpkg"
ANSWER_TTL_S = 60
MAX_CHANGED = 200_000
# dpkg quiet this long: owners and md5s are read again then, not when the next capture asks.
DPKG_QUIET_S = 0.5


class Journal:
    """Paths changed on the root filesystem, numbered, so a request can ask for those changed
    after an earlier request's number. Writes the kernel could not name (a directory removed
    before its events were read) are covered by the removal of that directory's nearest named
    ancestor, which the host applies to the whole subtree."""

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.fanotify_mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        self.fd = self.libc.fanotify_init(
            FAN_CLOEXEC | FAN_UNLIMITED_QUEUE | FAN_REPORT_DFID_NAME, os.O_RDONLY
        )
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init")
        if self.libc.fanotify_mark(
            self.fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, WATCHED, -100, b"/"
        ):
            raise OSError(ctypes.get_errno(), "fanotify_mark")
        self.mount_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        self.seq = 0
        self.changed = {}  # path -> number of its last event
        self.trees = {}  # directory -> number of its last creation or move into place
        self.barriers = {}  # request token -> number of the last event before it
        self.dpkg_seq = 0
        self.dpkg_at = 0.0
        self.maps = None
        self.maps_seq = -1
        self.dirs = {}  # directory handle -> path, until a directory moves or goes
        self.writers = {}  # path -> ("dpkg" | "agent", number of the event that said so)
        self.last_barrier = 0
        self.lineage = {}  # (pid, start time) -> "dpkg" | "agent"

    def dir_path(self, handle):
        path = self.dirs.get(handle)
        if path is None:
            buf = ctypes.create_string_buffer(handle, len(handle))
            fd = self.libc.open_by_handle_at(self.mount_fd, buf, O_PATH)
            if fd < 0:
                return None  # removed since: see the class docstring
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            if path.endswith(" (deleted)"):
                return None
            self.dirs[handle] = path
        return path

    def events(self):
        """(mask, path) of each event the kernel has for us, waiting for at least one."""
        data = os.read(self.fd, 1 << 16)
        at = 0
        while at + METADATA.size <= len(data):
            length, _vers, _res, meta_len, mask, fd, pid = METADATA.unpack_from(data, at)
            if fd >= 0:
                os.close(fd)
            info = at + meta_len
            path = None
            while info + INFO.size <= at + length:
                kind, _pad, size = INFO.unpack_from(data, info)
                if kind == INFO_DFID_NAME:
                    # fsid (8 bytes), then struct file_handle, then the entry's name
                    nbytes = struct.unpack_from("=I", data, info + 12)[0]
                    handle = data[info + 12 : info + 20 + nbytes]
                    name = data[info + 20 + nbytes : info + size].split(b"\0", 1)[0]
                    parent = self.dir_path(handle)
                    if parent is not None:
                        name = os.fsdecode(name)
                        path = parent if name in ("", ".") else os.path.join(parent, name)
                    if mask & FAN_ONDIR and mask & (FAN_MOVED_FROM | FAN_MOVED_TO | FAN_DELETE):
                        self.dirs.clear()
                info += size or INFO.size
            yield mask, path, pid
            at += length or METADATA.size

    def note(self, mask, path, pid):
        self.seq += 1
        if mask & FAN_Q_OVERFLOW:
            self.barriers.clear()  # events were lost: every later request gets everything
            return
        if path is None:
            return
        self.changed[path] = self.seq
        # Who wrote it, asked now: the writer may be gone by the time a capture asks. Once a
        # process outside dpkg touched a path since the last request, the path stays its.
        was = self.writers.get(path)
        if not (was and was[0] == "agent" and was[1] > self.last_barrier):
            self.writers[path] = (self.writer_of(pid), self.seq)
        if mask & FAN_ONDIR and mask & (FAN_CREATE | FAN_MOVED_TO):
            self.trees[path] = self.seq
        if mask & ENTRY_EVENTS:
            self.changed[os.path.dirname(path)] = self.seq  # its mtime changed
        if path.startswith("/var/lib/dpkg/"):
            self.dpkg_seq, self.dpkg_at = self.seq, time.monotonic()

    def forget(self):
        """Keep the last few tokens, and the changes a request for them can still ask about."""
        for old in list(self.barriers)[:-KEPT_TOKENS]:
            del self.barriers[old]
        if len(self.changed) > MAX_CHANGED:  # a mass of churn: the next capture walks instead
            self.barriers.clear()
        floor = min(self.barriers.values(), default=self.seq)
        self.changed = {p: n for p, n in self.changed.items() if n > floor}
        self.trees = {p: n for p, n in self.trees.items() if n > floor}
        self.writers = {p: w for p, w in self.writers.items() if w[1] > floor}
        if len(self.lineage) > MAX_LINEAGE:
            self.lineage.clear()

    def writer_of(self, pid):
        """The writer's side: "dpkg" when process `pid` is dpkg or a descendant of it (a
        maintainer script, a trigger), else "agent": anyone else, or a process already gone
        (nothing proves it was dpkg's)."""
        chain = []
        verdict = "agent"
        while pid > 1:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat_line = f.read(4096)
            except OSError:
                break
            comm, _, rest = stat_line.rpartition(b")")
            fields = rest.split()
            if len(fields) < 20:
                break
            key = (pid, fields[19])
            known = self.lineage.get(key)
            if known is not None:
                verdict = known
                break
            chain.append(key)
            if comm.partition(b"(")[2] == b"dpkg" and is_dpkg(pid):
                verdict = "dpkg"
                break
            pid = int(fields[1])
        for key in chain:
            self.lineage[key] = verdict
        return verdict

    def answer(self, token, params):
        since = self.barriers.get(params.get("since"))
        self.barriers[token] = self.last_barrier = self.seq
        try:
            return self.listing(token, since, params)
        finally:
            self.forget()

    def refresh_maps(self):
        """Read dpkg's owners and md5s again; paths whose owner or md5 changed count as changed."""
        old, self.maps, self.maps_seq = self.maps, dpkg_maps(), self.seq
        if old is not None:
            # A package's install or removal changes who owns paths it never touched (a
            # directory shared with other packages): list those again too.
            for before, after in zip(old, self.maps, strict=True):
                for path in before.keys() | after.keys():
                    if before.get(path) != after.get(path):
                        self.changed[path] = self.seq

    def listing(self, token, since, params):
        if self.maps is None or self.dpkg_seq > self.maps_seq:
            self.refresh_maps()
        if since is None:
            listing = Listing(params, self.maps)
            listing.writers = self.writers
            listing.walk("/")
            return listing.text({"token": token, "delta": False})
        listing = Listing(params, self.maps, delta=True)
        listing.writers = self.writers
        gone, trees = [], []
        for path in sorted(p for p, n in self.changed.items() if n > since):
            if skipped(path, listing.skip) or any(path.startswith(t + "/") for t in trees):
                continue
            try:
                st = os.lstat(path)
            except OSError:
                gone.append(path)
                continue
            if path != "/":
                listing.add(path, st)
            if stat.S_ISDIR(st.st_mode) and self.trees.get(path, 0) > since:
                trees.append(path)
                listing.walk(path)
        meta = {"token": token, "delta": True, "gone": gone, "trees": trees}
        return listing.text(meta)

    def serve(self):
        for name in sorted(os.listdir(REQUESTS)):  # written before the journal started
            self.request(name)
        while True:
            wait = None
            if self.maps is not None and self.dpkg_seq > self.maps_seq:
                wait = max(0.0, self.dpkg_at + DPKG_QUIET_S - time.monotonic())
            if not select.select([self.fd], [], [], wait)[0]:
                self.refresh_maps()  # dpkg went quiet (a capture tends to follow an install)
                continue
            for mask, path, pid in self.events():
                name = os.path.basename(path or "")
                if mask & FAN_CLOSE_WRITE and os.path.dirname(path or "") == REQUESTS:
                    self.seq += 1
                    self.request(name)
                else:
                    self.note(mask, path, pid)

    def request(self, name):
        if not name.startswith("req-"):
            return
        token = name[4:]
        path = os.path.join(REQUESTS, name)
        try:
            with open(path) as f:
                params = json.load(f)
            os.unlink(path)
        except (OSError, ValueError):
            return
        started = time.monotonic()
        kind = "changes" if params.get("since") in self.barriers else "a full listing"
        text = self.answer(token, params)
        write_answer(token, text)
        print(
            f"{time.strftime('%H:%M:%S')} answered {token} with {kind} in "
            f"{time.monotonic() - started:.3f} s ({len(text)} bytes)",
            file=sys.stderr,
            flush=True,
        )


def write_answer(token, text):
    # The asking shell only reads its answer (a process to remove it costs ~30 ms on TCG).
    for name in os.listdir(ANSWERS):
        path = os.path.join(ANSWERS, name)
        if name.endswith(".done") and os.stat(path).st_mtime < time.time() - ANSWER_TTL_S:
            os.unlink(path)
    tmp = os.path.join(ANSWERS, f"{token}.tmp")
    with open(tmp, "w", errors="surrogateescape") as f:
        f.write(text)
    os.rename(tmp, os.path.join(ANSWERS, f"{token}.done"))
    # The asking shell waits in a `read` on this FIFO: a line wakes it at once.
    try:
        fd = os.open(os.path.join(ANSWERS, "wake"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # nobody waits (ENXIO), or no FIFO
    try:
        os.write(fd, b"\n")
    except OSError:
        pass  # full of lines nobody read: whoever waits sees its answer at its next look
    finally:
        os.close(fd)


def is_dpkg(pid):
    """Whether process `pid` runs dpkg's own binary (a name alone is any process's choice)."""
    try:
        return os.readlink(f"/proc/{pid}/exe") == DPKG
    except OSError:
        return False


def start_time(pid):
    """Field 22 of /proc/PID/stat: with the pid, it names one process for good."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[19]


def stop_other_versions():
    """A journal of another probe version (fluid was upgraded) would only cost memory."""
    for path in glob.glob(os.path.join(os.path.dirname(ANSWERS), "*", "pid")):
        if os.path.dirname(path) == ANSWERS:
            continue
        try:
            with open(path) as f:
                pid, started = f.read().split()
            if start_time(pid) == started:
                os.kill(int(pid), 15)
        except (OSError, ValueError):
            pass


def serve():
    os.makedirs(REQUESTS, exist_ok=True)
    os.makedirs(ANSWERS, exist_ok=True)
    with open(os.path.join(ANSWERS, "lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another journal runs and answers
        stop_other_versions()
        with open(os.path.join(ANSWERS, "pid"), "w") as f:
            f.write(f"{os.getpid()} {start_time('self')}\n")
        if not os.path.exists(os.path.join(ANSWERS, "wake")):
            os.mkfifo(os.path.join(ANSWERS, "wake"), 0o600)
        try:
            journal = Journal()
        except OSError as e:
            # No fanotify here: answer what waits in full; captures then list everything.
            print(f"journal unavailable: {e}", file=sys.stderr)
            answer_waiting_in_full()
            return
        journal.serve()


def answer_waiting_in_full():
    for name in sorted(os.listdir(REQUESTS)):
        if not name.startswith("req-"):
            continue
        path = os.path.join(REQUESTS, name)
        with open(path) as f:
            params = json.load(f)
        os.unlink(path)
        listing = Listing(params, dpkg_maps())
        listing.walk("/")
        write_answer(name[4:], listing.text({"token": None, "delta": False}))


def main():
    global REQUESTS, ANSWERS
    if sys.argv[1] == "--serve":
        REQUESTS, ANSWERS = sys.argv[2], sys.argv[3]
        serve()
        return
    params = json.loads(sys.argv[1])
    listing = Listing(params, dpkg_maps())
    listing.walk("/")
    sys.stdout.write(listing.text({"token": None, "delta": False}))


main()
