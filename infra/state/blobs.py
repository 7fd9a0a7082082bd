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
import time
from collections.abc import Iterable
from pathlib import Path

from infra.errors import FluidError
from infra.permissions import private_dir, write_private

SHA256 = re.compile(r"[0-9a-f]{64}")
# Files whose content is secret wherever it is: password hashes and SSH host private keys.
SECRET_PATHS = re.compile(r"/etc/g?shadow-?|/etc/ssh/ssh_host_[^/]*_key")
# A PEM or OpenSSH private key block ("-----BEGIN [RSA |EC |OPENSSH |ENCRYPTED ]PRIVATE KEY-----").
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----")


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


class BlobStore:
    """Files by sha256 under one directory (`ab/abcdef…`), private to fluid's user."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, sha: str) -> Path:
        if not valid_sha(sha):
            raise InvalidHash(f"{sha!r} is not a sha256 (64 lowercase hex digits); no blob has it")
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store `data` under the sha256 computed here; return it."""
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha)
        if path.exists():
            # Touched: the janitor prunes by age, and a capture under way references it now.
            os.utime(path)
        else:
            private_dir(self.root)
            private_dir(path.parent)
            write_private(path, data)
        return sha

    def get(self, sha: str | None) -> bytes | None:
        """The content with that sha256, or None when it was never captured."""
        if not sha:
            return None
        try:
            return self._path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def has(self, sha: str) -> bool:
        """Whether content with that sha256 is stored."""
        return self._path(sha).is_file()

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
