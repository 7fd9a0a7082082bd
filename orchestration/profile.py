"""The Prefect profile "fluid": plain `prefect ...` commands and Python snippets talk to
fluid's server.

`fluid server start` writes the profile (the server's API URL and auth string) into the
profiles file Prefect itself reads (PREFECT_PROFILES_PATH, by default
$PREFECT_HOME/profiles.toml, i.e. ~/.prefect/profiles.toml) and makes it the active one, as
`prefect profile create fluid && prefect profile use fluid` and two `prefect config set`
would. The file then holds the auth string: it is kept 0600. Other profiles in it stay as
they are; environment variables (PREFECT_API_URL, PREFECT_PROFILE) still win over it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from orchestration.prefect_api import ControlPlane

PROFILE = "fluid"


def profiles_path() -> Path:
    """The profiles file Prefect reads in this environment."""
    from prefect.settings import get_current_settings

    path = get_current_settings().profiles_path
    assert path is not None  # Prefect always derives one from PREFECT_HOME
    return Path(path)


def write(cp: ControlPlane) -> Path:
    """Create or update profile "fluid" for `cp` and make it active; the file's path."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL
    from prefect.settings.profiles import load_profiles, save_profiles

    path = profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Made (or narrowed to) 0600 before the secret goes in; Prefect keeps the mode.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    profiles = load_profiles(include_defaults=False)
    profiles.update_profile(
        PROFILE,
        {
            PREFECT_API_URL: cp.api_url,
            # None drops a stale string from an earlier server with auth.
            PREFECT_API_AUTH_STRING: cp.auth_string.get_secret_value() or None,
        },
        source=path,
    )
    profiles.set_active(PROFILE)
    save_profiles(profiles)
    return path


def exports(cp: ControlPlane) -> str:
    """`export VAR=value` lines (shell-quoted) pointing a shell's Prefect at `cp`."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in cp.client_env().items())
