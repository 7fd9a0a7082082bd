"""ansible-lint's production profile over an exported playbook directory, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def lint_playbook(playbook: Path) -> None:
    """ansible-lint --profile production passes on the playbook directory `playbook`.

    It lints a copy: the linter writes its caches (.ansible/) into the project it lints, and
    the playbook's DIGEST must keep covering exactly what fluid wrote. --offline: no Galaxy
    downloads and no schema refresh (only loopback and package registries are reachable).
    """
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="fluid-lint-") as tmp:
        copy = Path(tmp) / "playbook"
        shutil.copytree(playbook, copy, symlinks=True)
        # A sealed playbook is read-only; its copy must take the linter's caches.
        for d, _, files in os.walk(copy):
            os.chmod(d, 0o700)
            for f in files:
                if not (Path(d) / f).is_symlink():
                    os.chmod(Path(d) / f, 0o600)
        r = subprocess.run(
            [
                str(bin_dir / "ansible-lint"),
                "--offline",
                "--profile",
                "production",
                "--nocolor",
                "-f",
                "pep8",
            ],
            cwd=copy,
            env={
                **os.environ,
                "PATH": f"{bin_dir}:{os.environ.get('PATH', os.defpath)}",
                "NO_COLOR": "1",
                # Its config and caches in the temporary directory, never the user's.
                "ANSIBLE_HOME": str(Path(tmp) / "ansible-home"),
                "XDG_CACHE_HOME": str(Path(tmp) / "cache"),
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode == 0, f"ansible-lint failed on {playbook}:\n{r.stdout}\n{r.stderr}"
