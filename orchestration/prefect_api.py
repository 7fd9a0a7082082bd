"""Speaking to a Prefect API over plain HTTP (no Prefect import): where it answers, the string
that unlocks it, and one request at a time. Used to start and manage fluid's processes before
any Prefect client may be imported."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

from pydantic import BaseModel, SecretStr

from infra.errors import FluidError


class ControlPlaneError(FluidError):
    """The local Prefect server or worker could not be started or reached."""


class ControlPlane(BaseModel):
    """Where fluid's Prefect API and UI answer, and the string that unlocks the API."""

    api_url: str
    ui_url: str
    auth_string: SecretStr

    def client_env(self) -> dict[str, str]:
        """Environment variables that point a Prefect client at this API."""
        env = {"PREFECT_API_URL": self.api_url}
        if self.auth_string.get_secret_value():
            env["PREFECT_API_AUTH_STRING"] = self.auth_string.get_secret_value()
        return env


def api_status(
    url: str, auth: SecretStr | None = None, timeout: float = 3.0, body: object = None
) -> int:
    """HTTP status of a GET (a POST of `body` as JSON when given), or 0 when nothing answers."""
    return api_call(url, auth, timeout, body)[0]


def api_call(
    url: str, auth: SecretStr | None = None, timeout: float = 3.0, body: object = None
) -> tuple[int, bytes]:
    """HTTP status and body of a GET (a POST of `body` as JSON when given); (0, b"") when
    nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None and auth.get_secret_value():
        token = base64.b64encode(auth.get_secret_value().encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""
