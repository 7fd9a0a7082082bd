"""Runs inside the guest (python3, stdlib only): list the root filesystem as JSON.

Argument: a JSON object with
  skip      directories not walked (pseudo and volatile trees),
  index     path of a gzipped JSON hash cache
            {path: [size, mtime_ns, ctime_ns, ino, sha256, pristine]},
            so only files whose metadata changed are hashed again,
  content   directories whose small files are always sent (a full capture's config trees),
  max       largest file whose content is sent.
The first line names users and groups, the second is a JSON array of entries. A file's
content is sent (base64) when it changed since the index and is not a pristine package file,
so the host can show text diffs and export it byte for byte.
"""

import base64
import glob
import grp
import gzip
import hashlib
import json
import os
import pwd
import stat
import sys

params = json.loads(sys.argv[1])
skip = set(params["skip"])
content_roots = tuple(params.get("content", []))
max_content = params.get("max", 4 << 20)
index = {}
if params.get("index") and os.path.exists(params["index"]):
    with gzip.open(params["index"], "rt") as f:
        index = json.load(f)

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


owner = {}
for lst in glob.glob("/var/lib/dpkg/info/*.list"):
    pkg = os.path.basename(lst)[:-5].split(":")[0]
    with open(lst, errors="surrogateescape") as f:
        for line in f:
            owner.setdefault(canonical(line.rstrip("\n")), pkg)
md5s = {}
for path in glob.glob("/var/lib/dpkg/info/*.md5sums"):
    with open(path, errors="surrogateescape") as f:
        for line in f:
            digest, _, name = line.rstrip("\n").partition("  ")
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

users = {p.pw_uid: p.pw_name for p in pwd.getpwall()}
groups = {g.gr_gid: g.gr_name for g in grp.getgrall()}
root_dev = os.lstat("/").st_dev
out = sys.stdout
out.write(json.dumps({"users": users, "groups": groups}) + "\n")
# Encoded once at the end: one json.dumps per entry costs more than the walk on a slow guest.
entries = []


def digests(path):
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def entry(path, st):
    e = {
        "p": path,
        "m": stat.S_IMODE(st.st_mode),
        "u": st.st_uid,
        "g": st.st_gid,
        "t": st.st_mtime_ns,
    }
    pkg = owner.get(path)
    if pkg:
        e["o"] = pkg
    if stat.S_ISLNK(st.st_mode):
        e["k"] = "l"
        e["l"] = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        e["k"] = "d"
    elif stat.S_ISREG(st.st_mode):
        e["k"] = "f"
        e["s"] = st.st_size
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        cached = index.get(path)
        if cached and cached[:4] == key:
            e["h"], e["pp"] = cached[4], cached[5]
            changed = False
        else:
            try:
                e["h"], md5 = digests(path)
            except OSError:
                return None
            e["pp"] = md5s.get(path) == md5
            changed = True
        want = changed if index else path.startswith(content_roots)
        if want and not e["pp"] and st.st_size <= max_content:
            with open(path, "rb") as f:
                e["c"] = base64.b64encode(f.read()).decode()
        e["i"] = key
    else:
        e["k"] = "o"
    return e


def walk(top):
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
        if path in skip:
            continue
        e = entry(path, st)
        if e is not None:
            entries.append(e)
        if stat.S_ISDIR(st.st_mode) and st.st_dev == root_dev:
            walk(path)


walk("/")
out.write(json.dumps(entries, separators=(",", ":")) + "\n")
