"""Content-addressed file contents captured from guests, for text diffs and exports."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class BlobStore:
    """Files by sha256 under one directory (`ab/abcdef…`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store `data`; return its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha

    def get(self, sha: str | None) -> bytes | None:
        """The content with that sha256, or None when it was never captured."""
        if not sha:
            return None
        try:
            return self._path(sha).read_bytes()
        except FileNotFoundError:
            return None
