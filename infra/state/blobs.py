"""Content-addressed file contents captured from guests, for text diffs and exports.

A hash names a host path here, and hashes come from guests: only a validated one (64
lowercase hex digits) is ever joined to the store's root, and content is stored under the hash
the host computed itself. Secrets (password hashes, private keys) are never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from infra.errors import FluidError, GuestDataRefused
from infra.host.permissions import private_dir, write_private

SHA256 = re.compile(r"[0-9a-f]{64}")
# Files whose content is secret wherever it is: password hashes and SSH host private keys.
SECRET_PATHS = re.compile(r"/etc/g?shadow-?|/etc/ssh/ssh_host_[^/]*_key")
# A PEM or OpenSSH private key block ("-----BEGIN [RSA |EC |OPENSSH |ENCRYPTED ]PRIVATE KEY-----").
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----")
# Longer than any PRIVATE_KEY match: a streamed file is searched with this much carried over
# from one chunk to the next, so a key split between chunks is found too.
_KEY_OVERLAP = 128
# Where streamed content waits, private, until it is verified and renamed into place; a left
# over part (fluid killed mid-transfer) is pruned by age like an unreferenced blob.
INCOMING = "incoming"
CHUNK = 1 << 20


class InvalidHash(FluidError, ValueError):
    """A string used as a blob's name is not a sha256 (64 lowercase hex digits)."""


def valid_sha(value: object) -> bool:
    """True for a sha256 in the form the store names blobs by."""
    return isinstance(value, str) and SHA256.fullmatch(value) is not None


def secret_reason(path: str | None, data: bytes | None) -> str | None:
    """Why content must not be kept (a phrase), or None when it may be."""
    if path is not None and SECRET_PATHS.fullmatch(path):
        return "password hashes" if "shadow" in path else "private key material"
    if data is not None and PRIVATE_KEY.search(data):
        return "private key material"
    return None


class LargeContent(BaseModel):
    """A file the probe hashed whose content did not travel in the capture's output: the host
    streams it from the guest into the store when it is not there yet."""

    path: str
    sha256: str
    size: int


class BlobTooLarge(FluidError):
    """A blob is larger than what the caller reads whole."""


class KeyScanner:
    """Finds private key material in a stream fed chunk by chunk (bounded memory)."""

    def __init__(self) -> None:
        self._tail = b""
        self.found = False

    def feed(self, chunk: bytes) -> None:
        if self.found:
            return
        data = self._tail + chunk
        # The cheap substring first: the regex runs only on the rare chunk that has it.
        if b"PRIVATE KEY-----" in data and PRIVATE_KEY.search(data):
            self.found = True
        self._tail = data[-_KEY_OVERLAP:]


class Incoming:
    """Content streamed into the store: hashed and written to a private temporary file as it
    arrives, renamed under its sha256 only by `commit` once `check` found the expected hash.
    `discard` (or a failed check) leaves nothing."""

    def __init__(self, store: BlobStore, expected: str, path: str) -> None:
        store.blob_path(expected)  # a valid sha256, before anything is made
        self.expected, self.path = expected, path
        self._store = store
        self._sha = hashlib.sha256()
        self._keys = KeyScanner()
        self.size = 0
        d = private_dir(private_dir(store.root) / INCOMING)
        fd, name = tempfile.mkstemp(prefix=f"{expected}.", suffix=".part", dir=d)
        self._tmp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        """Take the next bytes of the content."""
        assert self._file is not None, "write after check or discard"
        self._sha.update(chunk)
        self._keys.feed(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    def check(self) -> None:
        """Refuse (GuestDataRefused, the part removed) content that does not hash to what the
        probe reported or that holds private key material."""
        if self._file is not None:
            self._file.close()
            self._file = None
        actual = self._sha.hexdigest()
        if actual != self.expected:
            self.discard()
            raise GuestDataRefused(
                f"the content of {self.path!r} streamed from the guest ({self.size} bytes) "
                f"hashes to {actual}, not the {self.expected} the files probe reported: the "
                "file changed between the probe and the transfer (or the guest lies); capture "
                "again once nothing writes to it"
            )
        if self._keys.found:
            self.discard()
            raise GuestDataRefused(
                f"the content of {self.path!r} holds private key material the files probe did "
                "not report; it is never kept"
            )

    def commit(self) -> str:
        """Move checked content into the store under its sha256 (once; a copy already there
        is kept and touched)."""
        if self._file is not None:
            raise FluidError("Incoming.commit before check")
        path = self._store.blob_path(self.expected)
        if path.exists():
            os.utime(path)
            self.discard()
        else:
            private_dir(path.parent)
            os.replace(self._tmp, path)
        return self.expected

    def discard(self) -> None:
        """Remove the part (safe to call twice)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)


class BlobStore:
    """Files by sha256 under one directory (`ab/abcdef…`), private to fluid's user."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def blob_path(self, sha: str) -> Path:
        """Where the blob with that sha256 is kept; InvalidHash when `sha` is not a sha256."""
        if not valid_sha(sha):
            raise InvalidHash(f"{sha!r} is not a sha256 (64 lowercase hex digits); no blob has it")
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store `data` under the sha256 computed here; return it."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if path.exists():
            # Touched: the janitor prunes by age, and a capture under way references it now.
            os.utime(path)
        else:
            private_dir(self.root)
            private_dir(path.parent)
            write_private(path, data)
        return sha

    def get(self, sha: str | None, *, limit: int | None = None) -> bytes | None:
        """The content with that sha256, or None when it was never captured; BlobTooLarge when
        it holds more than `limit` bytes (large blobs are read with `open`, in chunks)."""
        if not sha:
            return None
        try:
            with self.open(sha) as f:
                if limit is None:
                    return f.read()
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise BlobTooLarge(f"the blob {sha} holds more than {limit} bytes")
        return data

    def open(self, sha: str) -> BinaryIO:
        """The stored content with that sha256, opened for reading (FileNotFoundError if none)."""
        fd = os.open(self.blob_path(sha), os.O_RDONLY | os.O_NOFOLLOW)
        return os.fdopen(fd, "rb")

    def size(self, sha: str | None) -> int | None:
        """The stored content's size in bytes, without reading it (None when not stored)."""
        if not sha:
            return None
        try:
            return self.blob_path(sha).stat().st_size
        except FileNotFoundError:
            return None

    def has(self, sha: str) -> bool:
        """Whether content with that sha256 is stored."""
        return self.blob_path(sha).is_file()

    def touch(self, sha: str) -> bool:
        """Whether content with that sha256 is stored; if so it is touched, as a capture that
        names it again must not see the janitor prune it (it prunes by age)."""
        try:
            os.utime(self.blob_path(sha))
        except FileNotFoundError:
            return False
        return True

    def incoming(self, expected: str, path: str) -> Incoming:
        """A private part to stream content into, expected to hash to `expected` (`path`, the
        guest's, only names it in errors)."""
        return Incoming(self, expected, path)

    def prune(self, keep: Iterable[str], *, older_than_s: float) -> tuple[int, int]:
        """Remove blobs not in `keep` and untouched for `older_than_s`; (count, bytes) removed."""
        keep = set(keep)
        cutoff = time.time() - older_than_s
        count = size = 0
        if not self.root.is_dir():
            return 0, 0
        for sub in self.root.iterdir():
            if not sub.is_dir() or sub.is_symlink():
                continue
            for path in sub.iterdir():
                if path.name in keep:
                    continue
                try:
                    st = path.lstat()
                    if st.st_mtime >= cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                count, size = count + 1, size + st.st_size
            with contextlib.suppress(OSError):
                sub.rmdir()  # only when it is empty
        return count, size
