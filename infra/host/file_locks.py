"""Exclusive flock()s on lock files that their owners may remove while others wait on them."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class FileLock:
    """An exclusive flock on `path`; with wait=False, `held` is False when another has it."""

    def __init__(self, path: Path, *, wait: bool) -> None:
        self.path = path
        self._file: IO[str] | None = None
        while True:
            f = path.open("a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                f.close()
                return
            # The file may have been removed (`clear`) while we waited: a lock on a removed file
            # excludes nobody, so take the one now at the path.
            if self._same_file(f):
                self._file = f
                return
            f.close()

    def _same_file(self, f: IO[str]) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            return False

    @property
    def held(self) -> bool:
        return self._file is not None

    def fileno(self) -> int:
        assert self._file is not None
        return self._file.fileno()

    def release(self) -> None:
        """Give the lock up; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
