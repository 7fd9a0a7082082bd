"""Every failure of the `fluid` command is one line on stderr and a non-zero exit; the
traceback only with --debug or FLUID_DEBUG=1. A bad setting names its environment variable."""

from __future__ import annotations

import pytest

from infra.errors import SettingsError
from infra.settings import FluidSettings
from tests.conftest import fluid

NO_DEBUG = {"FLUID_DEBUG": ""}


def stderr_lines(r) -> list[str]:
    return r.stderr.decode().splitlines()


def test_a_bad_setting_names_the_variable_and_its_value_in_one_line():
    r = fluid("sandbox", "list", check=False, env={**NO_DEBUG, "FLUID_MEMORY_MIB": "abc"})
    assert r.returncode == 1 and r.stdout == b""
    [line] = stderr_lines(r)
    assert line.startswith("fluid: error: FLUID_MEMORY_MIB='abc': must be a valid integer")
    assert "memory_mib" not in line


def test_a_setting_out_of_range_says_what_it_must_be():
    r = fluid("sandbox", "list", check=False, env={**NO_DEBUG, "FLUID_MAX_SANDBOXES": "1"})
    assert r.returncode == 1
    assert stderr_lines(r) == [
        "fluid: error: FLUID_MAX_SANDBOXES='1': must be greater than or equal to 2"
    ]


def test_a_value_that_is_not_json_names_the_variable_and_an_example():
    r = fluid("image", "list", check=False, env={**NO_DEBUG, "FLUID_PORT_RANGE": "22200-22999"})
    assert r.returncode == 1
    [line] = stderr_lines(r)
    assert "FLUID_PORT_RANGE='22200-22999': not a JSON value" in line
    assert "FLUID_PORT_RANGE='[22200, 22999]'" in line


def test_every_bad_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLUID_DOMAIN_TYPE", "xen")
    monkeypatch.setenv("FLUID_PRODUCTION_ADDRESS", "not-an-ip")
    with pytest.raises(SettingsError) as err:
        FluidSettings()
    assert str(err.value) == (
        "FLUID_DOMAIN_TYPE='xen': must be 'auto', 'kvm' or 'qemu'; "
        "FLUID_PRODUCTION_ADDRESS='not-an-ip': not an IP address"
    )


def test_a_secret_setting_is_never_echoed(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(SettingsError, match=r"^ca_private_key=<hidden>: must be") as err:
        FluidSettings(ca_private_key=["-----BEGIN OPENSSH PRIVATE KEY-----"])
    assert "BEGIN" not in str(err.value)


def test_debug_shows_the_traceback_then_the_same_line():
    env = {**NO_DEBUG, "FLUID_MEMORY_MIB": "abc"}
    plain = fluid("sandbox", "list", check=False, env=env)
    debug = fluid("--debug", "sandbox", "list", check=False, env=env)
    assert debug.returncode == 1
    text = debug.stderr.decode()
    assert text.startswith("Traceback (most recent call last):")
    assert "infra/settings.py" in text and "pydantic" in text  # the cause is kept
    assert stderr_lines(debug)[-1] == stderr_lines(plain)[0]


def test_fluid_debug_in_the_environment_shows_the_traceback_too():
    r = fluid("sandbox", "list", check=False, env={"FLUID_DEBUG": "1", "FLUID_MEMORY_MIB": "x"})
    assert r.returncode == 1 and b"Traceback (most recent call last):" in r.stderr


def test_an_unexpected_error_is_one_line_naming_its_kind(tmp_path):
    missing = tmp_path / "no-such-playbook"
    r = fluid("verify", str(missing), check=False, env=NO_DEBUG)
    assert r.returncode == 1 and r.stdout == b""
    [line] = stderr_lines(r)
    assert line.startswith("fluid: error: FileNotFoundError: ") and str(missing) in line
    assert line.endswith("(--debug or FLUID_DEBUG=1 shows the traceback)")
    debug = fluid("--debug", "verify", str(missing), check=False, env=NO_DEBUG)
    assert debug.returncode == 1 and b"Traceback (most recent call last):" in debug.stderr


def test_a_usage_error_is_argparse_s_message_and_exit_2():
    r = fluid("sandbox", "frobnicate", check=False)
    assert r.returncode == 2 and b"invalid choice: 'frobnicate'" in r.stderr
    assert b"Traceback" not in r.stderr


def test_a_negative_count_is_refused_before_anything_starts():
    r = fluid("pool", "fill", "-1", check=False)
    assert r.returncode == 2 and b"-1 is below 0: give a count, 0 or more" in r.stderr, r
    r = fluid("pool", "fill", "two", check=False)
    assert r.returncode == 2 and b"'two' is not a whole number" in r.stderr, r
