"""`fluid completion bash|zsh` prints scripts that complete fluid's commands, options and
option values from the parser itself, in the shell alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cli.main import build_parser
from cli.shell_completion import nodes
from tests.conftest import fluid

# bash's completion protocol, as readline drives it: the words so far, the index of the word
# being completed; the script's function answers in COMPREPLY.
BASH_DRIVER = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
_fluid_complete
printf '%s\\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "fluid.bash"
    path.write_bytes(fluid("completion", "bash").stdout)
    return path


def bash_complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of `words` (the line typed so far)."""
    r = subprocess.run(
        ["bash", "-c", BASH_DRIVER, "_", str(script), *words],
        capture_output=True,
        text=True,
        check=True,
    )
    return [w for w in r.stdout.splitlines() if w]


def test_bash_completes_nouns_commands_options_and_choices(bash_script: Path):
    assert bash_complete(bash_script, "fluid", "sa") == ["sandbox"]
    assert "checkpoint" in bash_complete(bash_script, "fluid", "sandbox", "")
    assert bash_complete(bash_script, "fluid", "--debug", "sandbox", "chec") == [
        "checkpoints",
        "checkpoint",
    ]
    assert bash_complete(bash_script, "fluid", "sandbox", "create", "--net") == ["--network"]
    assert bash_complete(bash_script, "fluid", "sandbox", "create", "--network", "") == [
        "nat",
        "isolated",
    ]
    assert bash_complete(bash_script, "fluid", "completion", "") == ["bash", "zsh"]
    assert bash_complete(bash_script, "fluid", "--") == ["--help", "--version", "--debug"]


def test_bash_leaves_free_values_and_guest_commands_to_the_shell(bash_script: Path):
    # Nothing offered: `complete -o default` falls back to file names.
    assert bash_complete(bash_script, "fluid", "export", "web", "--out", "") == []
    assert bash_complete(bash_script, "fluid", "sandbox", "exec", "web", "--", "apt-") == []


def test_bash_offers_every_command_of_the_parser(bash_script: Path):
    for node in nodes(build_parser()):
        if node.subcommands:
            offered = bash_complete(bash_script, "fluid", *node.path, "")
            assert offered == [name for name, _ in node.subcommands], node.path


# zsh's completion builtins only run inside a completion widget, which needs a terminal;
# these stand-ins print what the script asks zsh to offer.
ZSH_DRIVER = """
_describe() { local -a entries; entries=("${(@P)4}"); print -rl -- "${entries[@]}"; }
compadd() { [[ $1 == -a ]] && print -rl -- "${(@P)2}" || { shift; print -rl -- "$@"; } }
_default() { print -r -- "(default)"; }
compdef() { print -r -- "compdef $*"; }
source "$1"; shift
words=("$@"); CURRENT=$#
_fluid
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_with_each_command_s_help(tmp_path: Path):
    script = tmp_path / "_fluid"
    script.write_bytes(fluid("completion", "zsh").stdout)
    subprocess.run(["zsh", "-n", str(script)], check=True)

    def complete(*words: str) -> list[str]:
        r = subprocess.run(
            ["zsh", "-f", "-c", ZSH_DRIVER, "_", str(script), *words],
            capture_output=True,
            text=True,
            check=True,
        )
        return r.stdout.splitlines()

    assert complete("fluid", "sandbox", "")[0] == "compdef _fluid fluid"
    offered = complete("fluid", "sandbox", "")[1:]
    assert "create:create a sandbox and wait for SSH" in offered
    assert complete("fluid", "sandbox", "create", "--network", "")[1:] == ["nat", "isolated"]
    assert "--json:one JSON object on stdout" in complete("fluid", "sandbox", "list", "--")
    assert complete("fluid", "completion", "")[1:] == ["bash", "zsh"]
    assert complete("fluid", "sandbox", "exec", "web", "--", "ls")[1:] == ["(default)"]
