"""Guardrails for an agent's tool calls: command rules matched on the parsed shell command, path
restrictions for the file tools, and per-command and per-attempt limits.

They stop an agent from destroying what makes its sandbox useful (wiping the root filesystem,
powering off, locking fluid out of sshd); they are not a security boundary, the VM is. A root
shell can always hide a command from any parser (a script file, python -c, ...), so the rules
aim at the mistakes an agent makes, and refuse with a reason it can act on.

Commands are parsed with bashlex into every simple command that would run: inside pipelines,
lists, subshells, $(...) and backticks, process substitutions, if/while/for bodies, functions,
heredocs fed to a shell, and through wrappers (bash -c, sudo, env, timeout, xargs, ...). A
quoted string is an argument, never a command: `echo "rm -rf /"` is harmless. Where bashlex
cannot parse valid bash (case, arithmetic, [[ ]]), a shlex-based splitter takes over.
"""

from __future__ import annotations

import glob
import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Annotated, Self

import bashlex
import bashlex.errors
import bashlex.subst
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from infra.errors import FluidError


class GuardrailViolation(FluidError):
    """A tool call the guardrails refuse; str(e) is told to the agent."""


def _paramexpand_or_fail(parserobj: object, string: str, sindex: int) -> tuple[object, int]:
    # bashlex 0.18 rewinds to the start of a word holding "${" without a "}" (as in
    # `echo a'${'`) and then loops forever; make it fail, so the fallback parser takes over.
    node, end = _bashlex_paramexpand(parserobj, string, sindex)
    if end <= sindex:
        raise bashlex.errors.ParsingError("unterminated ${", string, sindex)
    return node, end


_bashlex_paramexpand = bashlex.subst._paramexpand
bashlex.subst._paramexpand = _paramexpand_or_fail


def _normpath(path: str) -> str:
    """Lexically normalise an absolute path: `..` stops at /, and // or /./ collapse."""
    # normpath keeps exactly two leading slashes (POSIX leaves them implementation-defined).
    return posixpath.normpath("/" + path.lstrip("/"))


def _absolute(path: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f"{path!r} must be an absolute path (starting with /)")
    return _normpath(path)


AbsolutePath = Annotated[str, AfterValidator(_absolute)]
"""An absolute path (globs allowed), normalised when the model is built."""
PositiveSeconds = Annotated[float, Field(gt=0)]
PositiveCount = Annotated[int, Field(gt=0)]


def _alternatives(pattern: str) -> list[str]:
    return pattern.split("|")


def _matches(text: str, pattern: str) -> bool:
    """fnmatch `text` against `pattern`, whose |-separated alternatives are tried in turn."""
    return any(fnmatchcase(text, alt) for alt in _alternatives(pattern))


def _program(word: str) -> str:
    return posixpath.basename(word) or word


def _flags(args: Sequence[str]) -> set[str]:
    """Flags set in `args`: -rf gives r and f, --recursive[=x] gives recursive; stops at --."""
    found: set[str] = set()
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("--"):
            found.add(arg[2:].split("=", 1)[0])
        elif arg.startswith("-") and len(arg) > 1:
            found.update(arg[1:])
    return found


_KEY_PATH = re.compile(r"^([A-Za-z0-9_.-]+=)(/.*)$", re.DOTALL)


def _normalise_arg(arg: str) -> str:
    """An argument as rules see it: paths (also in key=/path) lexically normalised."""
    if arg.startswith("/"):
        return _normpath(arg)
    if m := _KEY_PATH.match(arg):
        return m.group(1) + _normpath(m.group(2))
    return arg


class CommandRule(BaseModel):
    """A rule matched on one parsed simple command, never on substrings of the command line.

    Every part given must match: the program, each flag and each argument glob. Alternatives
    are separated by | in any of them (`program="pkill|killall"`, `flags=["r|R|recursive"]`).
    """

    model_config = ConfigDict(extra="forbid")

    program: str = Field(
        min_length=1, description='fnmatch glob on the program\'s basename, e.g. "rm" or "mkfs*".'
    )
    args: list[str] = Field(
        default_factory=list,
        description=(
            "Globs that must each match at least one argument; arguments that are absolute "
            "paths are normalised first (// and /usr/.. count as /). The text is matched as "
            "typed, so a literal * is written [*]."
        ),
    )
    flags: list[str] = Field(
        default_factory=list,
        description='Flags that must each be set: "r" matches -r, -rf and -fr; "recursive" '
        "matches --recursive.",
    )
    reason: str = Field(default="", description="Why a deny rule refuses; told to the agent.")

    @field_validator("args", "flags")
    @classmethod
    def _no_empty_entries(cls, value: list[str]) -> list[str]:
        if any(not entry for entry in value):
            raise ValueError("entries may not be empty")
        return value

    @field_validator("flags")
    @classmethod
    def _strip_dashes(cls, value: list[str]) -> list[str]:
        # "-r" and "--recursive" are natural ways to write a flag; store it bare.
        return ["|".join(alt.lstrip("-") for alt in _alternatives(f)) for f in value]

    def matches(self, argv: Sequence[str]) -> bool:
        """Whether this rule matches the simple command `argv` (program first)."""
        if not argv or not _matches(_program(argv[0]), self.program):
            return False
        args = [_normalise_arg(a) for a in argv[1:]]
        flags = _flags(argv[1:])
        return all(any(f in flags for f in _alternatives(want)) for want in self.flags) and all(
            any(_matches(a, pattern) for a in args) for pattern in self.args
        )


class PathRule(BaseModel):
    """A file no command may write (by redirection, tee, cp, mv, rm, sed -i, dd of=, ...)."""

    model_config = ConfigDict(extra="forbid")

    path: AbsolutePath = Field(description="Absolute path or fnmatch glob.")
    reason: str = Field(min_length=1, description="Why; told to the agent.")


def _literal(paths: Sequence[str]) -> str:
    """An args pattern matching exactly these texts (glob characters in them are literal)."""
    return "|".join(glob.escape(p) for p in paths)


# Removing any of these (or everything in it) leaves a sandbox that cannot boot or be reached.
_SYSTEM_DIRS = (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/root", "/run", "/sbin", "/usr", "/var", "/usr/bin", "/usr/lib", "/usr/sbin", "/var/lib",
)  # fmt: skip
_WIPE_TARGETS = _literal([*_SYSTEM_DIRS, *(posixpath.join(d, "*") for d in _SYSTEM_DIRS)])
# Whole-disk and partition devices (not /dev/null, /dev/loop*, ...).
_DISKS = (
    "/dev/sd*", "/dev/vd*", "/dev/hd*", "/dev/xvd*", "/dev/nvme*", "/dev/mmcblk*",
    "/dev/dm-*", "/dev/md*", "/dev/mapper/*", "/dev/disk/*", "/dev/root",
)  # fmt: skip
_SSH_UNITS = (
    "ssh|sshd|ssh.service|sshd.service|ssh.socket|sshd.socket|fluid-instance|fluid-instance.service"
)
_SSH_TRUST = (
    "fluid logs in to the sandbox over sshd as root with certificates from its CA, trusted "
    "through sshd's configuration and fluid's files in /etc/ssh; changing them can lock fluid "
    "(and you) out of the sandbox. Leave sshd, its configuration and host keys as they are"
)
_POWER = (
    "powers off, reboots or isolates the sandbox, which ends your session and cannot be undone "
    "from inside it; if a change needs a reboot to take effect, say so in your summary instead"
)

DEFAULT_DENY_COMMANDS: tuple[CommandRule, ...] = (
    # Wiping the root filesystem.
    CommandRule(
        program="rm",
        flags=["r|R|recursive"],
        args=[_WIPE_TARGETS],
        reason="removes the root filesystem or a system directory the sandbox needs to boot "
        "and be reached; remove specific files or subdirectories instead",
    ),
    CommandRule(
        program="rm",
        flags=["no-preserve-root"],
        reason="--no-preserve-root lets rm remove the root filesystem; it is never needed",
    ),
    # Destroying the disk.
    CommandRule(
        program="mkfs*|mke2fs|mkswap|wipefs|fdisk|sfdisk|cfdisk|gdisk|sgdisk|parted|blkdiscard",
        args=["|".join(_DISKS)],
        reason="formats, wipes or repartitions the sandbox's disk; inspect disks with lsblk, "
        "blkid or df instead",
    ),
    CommandRule(
        program="dd",
        args=["|".join("of=" + d for d in _DISKS)],
        reason="overwrites the sandbox's disk",
    ),
    CommandRule(program="shred", args=["|".join(_DISKS)], reason="destroys the sandbox's disk"),
    # Powering off.
    CommandRule(program="poweroff|shutdown|halt|reboot|kexec", reason=_POWER),
    CommandRule(program="init|telinit", args=["0|1|6|s|S|single|rescue|emergency"], reason=_POWER),
    CommandRule(
        program="systemctl",
        args=[
            "poweroff|halt|reboot|soft-reboot|kexec|suspend|hibernate|hybrid-sleep|"
            "suspend-then-hibernate|rescue|emergency|isolate|default|poweroff.target|"
            "reboot.target|halt.target|kexec.target|rescue.target|emergency.target"
        ],
        reason=_POWER,
    ),
    # Tampering with sshd or fluid's CA trust (restart and reload are fine).
    CommandRule(
        program="systemctl", args=["stop|disable|mask|kill", _SSH_UNITS], reason=_SSH_TRUST
    ),
    CommandRule(program="service", args=["ssh|sshd", "stop"], reason=_SSH_TRUST),
    CommandRule(program="pkill|killall", args=["*sshd*|ssh"], reason=_SSH_TRUST),
    CommandRule(
        program="apt|apt-get|aptitude",
        args=["remove|purge|autoremove", "openssh*"],
        reason=_SSH_TRUST,
    ),
    CommandRule(program="dpkg", args=["-r|-P|--remove|--purge", "openssh*"], reason=_SSH_TRUST),
)

# fluid's sshd configuration, CA trust, principal and host key, and the boot service writing them.
_FLUID_SSH_FILES = (
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d",
    "/etc/ssh/fluid_*",
    "/etc/ssh/ssh_host_*",
    "/usr/local/sbin/fluid-instance",
    "/etc/systemd/system/fluid-instance.service",
)

DEFAULT_PROTECTED_PATHS: tuple[PathRule, ...] = (
    *(PathRule(path=p, reason=_SSH_TRUST) for p in _FLUID_SSH_FILES),
    *(PathRule(path=d, reason="it is the sandbox's disk") for d in _DISKS),
    PathRule(path="/proc/sysrq-trigger", reason="it can reboot or crash the sandbox's kernel"),
)

DEFAULT_DENY_WRITE: tuple[str, ...] = ("/proc", "/sys", "/dev", "/boot", *_FLUID_SSH_FILES)


class Guardrails(BaseModel):
    """What an agent may run and touch, and its per-command and per-attempt limits.

    `Guardrails()` is the default set: every command allowed except DEFAULT_DENY_COMMANDS,
    files readable everywhere and writable outside /proc, /sys, /dev, /boot and fluid's sshd
    files.
    """

    model_config = ConfigDict(extra="forbid")

    deny_commands: list[CommandRule] = Field(
        default_factory=lambda: list(DEFAULT_DENY_COMMANDS),
        description="Commands refused wherever they appear in a command line.",
    )
    allow_commands: list[CommandRule] = Field(
        default_factory=list,
        description="When not empty, every command must match one of these (deny still wins).",
    )
    protected_paths: list[PathRule] = Field(
        default_factory=lambda: list(DEFAULT_PROTECTED_PATHS),
        description="Files no command may write through a redirection or a file-changing "
        "command (tee, cp, mv, rm, sed -i, chmod, dd of=, ...).",
    )
    read_roots: list[AbsolutePath] = Field(
        default_factory=lambda: ["/"], description="The file tools read only under these."
    )
    write_roots: list[AbsolutePath] = Field(
        default_factory=lambda: ["/"], description="The file tools write only under these."
    )
    deny_write: list[AbsolutePath] = Field(
        default_factory=lambda: list(DEFAULT_DENY_WRITE),
        description="The file tools never write these paths (or globs) or anything under them.",
    )
    command_timeout_s: PositiveSeconds = Field(
        default=600, description="A command running longer is killed."
    )
    output_cap_bytes: PositiveCount = Field(
        default=64_000, description="A command's output beyond this many bytes is cut."
    )
    max_tool_calls: PositiveCount = Field(default=300, description="Tool calls per attempt.")
    max_commands: PositiveCount = Field(default=200, description="Commands run per attempt.")
    max_command_seconds: PositiveSeconds = Field(
        default=3600, description="Total time commands may run per attempt."
    )
    max_checkpoints: PositiveCount = Field(
        default=10,
        description="Checkpoints an agent may make per sandbox (each holds its disk changes "
        "and memory); the flow's own are not counted.",
    )

    @model_validator(mode="after")
    def _deny_rules_explain(self) -> Self:
        for rule in self.deny_commands:
            if not rule.reason.strip():
                raise ValueError(f"deny rule for {rule.program!r} needs a reason for the agent")
        return self

    def check_command(self, command: str) -> None:
        """Raise GuardrailViolation unless every part of the shell `command` may run."""
        parsed = _parse(command)
        for argv in parsed.commands:
            for rule in self.deny_commands:
                if rule.matches(argv):
                    raise GuardrailViolation(f"guardrails refused `{_show(argv)}`: {rule.reason}")
        for argv in parsed.commands:
            for target, tree in _write_targets(argv):
                if reason := self._protected(target, tree):
                    raise GuardrailViolation(
                        f"guardrails refused `{_show(argv)}`: it changes {target}; {reason}"
                    )
        for op, target in parsed.redirects:
            if reason := self._protected(_normpath(target), tree=False):
                raise GuardrailViolation(
                    f"guardrails refused the redirection `{op} {target}`: {reason}"
                )
        if self.allow_commands:
            for argv in parsed.commands:
                if not any(rule.matches(argv) for rule in self.allow_commands):
                    allowed = ", ".join(dict.fromkeys(r.program for r in self.allow_commands))
                    raise GuardrailViolation(
                        f"guardrails refused `{_show(argv)}`: {_program(argv[0])} is not on the "
                        f"allow list; allowed programs: {allowed}"
                    )

    def check_path(self, path: str, *, write: bool, resolved: str | None = None) -> str:
        """The path a file tool should use, or GuardrailViolation.

        `path` must be absolute; it is normalised lexically (`..` cannot climb above /).
        `resolved` is the guest's `realpath -m` of it (symlinks followed) and must pass the
        same checks; it is returned when given, else the normalised path.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise GuardrailViolation(
                f"{path!r} is not an absolute path: the file tools have no working directory, "
                "so give the full path, starting with /"
            )
        normal = self._check_path(path, write, via="")
        if resolved is None:
            return normal
        if not resolved.startswith("/"):
            raise GuardrailViolation(f"could not resolve {path} to an absolute path ({resolved!r})")
        return self._check_path(resolved, write, via=f"{path} resolves to {_normpath(resolved)}: ")

    def _check_path(self, path: str, write: bool, via: str) -> str:
        if "\0" in path:
            raise GuardrailViolation(f"{via}{path!r} contains a NUL byte")
        normal = _normpath(path)
        kind, roots = ("write", self.write_roots) if write else ("read", self.read_roots)
        if not any(_under(normal, root) for root in roots):
            if not roots:
                raise GuardrailViolation(f"{via}the guardrails allow no file {kind}s")
            raise GuardrailViolation(
                f"{via}{normal} is outside the guardrails' {kind} roots "
                f"({', '.join(roots)}); use a path under one of them"
            )
        if write:
            for entry in self.deny_write:
                if _under(normal, entry):
                    raise GuardrailViolation(
                        f"{via}writing {normal} is refused: it is under {entry}; "
                        f"{_deny_write_reason(entry)}"
                    )
        return normal

    def _protected(self, target: str, tree: bool) -> str | None:
        """The reason writing `target` (with `tree`: anything under it) is refused, or None."""
        if not target.startswith("/"):
            return None  # relative to a working directory the guardrails cannot know
        for rule in self.protected_paths:
            if _hits(target, rule.path, tree):
                return rule.reason
        return None


def _deny_write_reason(entry: str) -> str:
    if entry in ("/proc", "/sys", "/dev", "/boot"):
        return "kernel, device and boot state is not written through the file tools"
    if entry in _FLUID_SSH_FILES:
        return _SSH_TRUST
    return "the guardrails' deny_write list protects it"


def _under(path: str, entry: str) -> bool:
    """Whether `path` is `entry` or below it, comparing whole components (entry may be a glob)."""
    candidate = path
    while True:
        if fnmatchcase(candidate, entry):
            return True
        if candidate == "/":
            return False
        candidate = posixpath.dirname(candidate)


def _hits(target: str, protected: str, tree: bool) -> bool:
    """Whether writing `target` (a path, or a glob as typed) may write `protected` (a path or
    glob) or anything under it."""
    if _under(target, protected) or fnmatchcase(protected, target):
        return True
    if not tree:
        return False
    # rm -r, mv and chmod -R of a directory above a protected file reach the file too.
    literal = protected
    if glob.has_magic(protected):
        literal = posixpath.dirname(re.split(r"[*?\[]", protected, maxsplit=1)[0] + "x")
    while True:
        if fnmatchcase(literal, target):
            return True
        if literal == "/":
            return False
        literal = posixpath.dirname(literal)


def _show(argv: Sequence[str], limit: int = 200) -> str:
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- which files a command writes -----------------------------------------------------------


def _operands(args: Sequence[str]) -> list[str]:
    """Words that are not options (everything after --); option values are kept, which is
    harmless: they only ever add candidate targets."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i + 1 :])
        if not (arg.startswith("-") and len(arg) > 1):
            out.append(arg)
    return out


def _target_directory(args: Sequence[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("-t", "--target-directory") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--target-directory="):
            return arg.split("=", 1)[1]
        if arg.startswith("-t") and not arg.startswith("--") and len(arg) > 2:
            return arg[2:]
    return None


_REMOVERS = {"rm", "unlink", "shred", "truncate", "tee"}
_MODE_CHANGERS = {"chmod", "chown", "chgrp", "chattr", "setfacl"}
_COPIERS = {"cp", "mv", "install", "ln", "rsync", "scp"}


def _write_targets(argv: Sequence[str]) -> list[tuple[str, bool]]:
    """Absolute paths the command would change, each with whether everything below it is
    changed too (rm -r, mv, chmod -R)."""
    prog, args = _program(argv[0]), list(argv[1:])
    flags = _flags(args)
    paths: list[str] = []
    tree = False
    if prog in _REMOVERS:
        paths, tree = _operands(args), prog == "rm"
    elif prog == "sed" and ("i" in flags or "in-place" in flags):
        paths = _operands(args)
    elif prog in _MODE_CHANGERS:
        paths, tree = _operands(args), bool({"R", "recursive"} & flags)
    elif prog in _COPIERS:
        operands = _operands(args)
        dest = _target_directory(args)
        if dest is None and len(operands) >= 2:
            dest, operands = operands[-1], operands[:-1]
        if dest is not None:
            # The destination may be a directory: the file lands at dest/basename(source).
            paths = [dest, *(posixpath.join(dest, posixpath.basename(s)) for s in operands)]
        if prog == "mv":
            paths += operands  # moving a file away breaks it as much as overwriting it
            tree = True
    elif prog == "dd":
        paths = [a[3:] for a in args if a.startswith("of=")]
    return [(_normpath(p), tree) for p in paths if p.startswith("/")]


# --- parsing --------------------------------------------------------------------------------

_MAX_DEPTH = 8
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=", re.DOTALL)
_SUDO_VALUED = frozenset({
    "-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-T", "-U", "--user", "--group", "--host",
    "--prompt", "--close-from", "--chdir", "--role", "--type", "--command-timeout", "--other-user",
})  # fmt: skip
_XARGS_VALUED = frozenset({
    "-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file", "--delimiter", "--eof",
    "--replace", "--max-lines", "--max-args", "--max-procs", "--max-chars", "--process-slot-var",
})  # fmt: skip
# program: (options that take a separate value, positional words before the wrapped program)
_WRAPPERS: dict[str, tuple[frozenset[str], int]] = {
    "sudo": (_SUDO_VALUED, 0),
    "doas": (frozenset({"-u", "-C"}), 0),
    "env": (frozenset({"-u", "-C", "--unset", "--chdir"}), 0),
    "nohup": (frozenset(), 0),
    "timeout": (frozenset({"-s", "-k", "--signal", "--kill-after"}), 1),
    "xargs": (_XARGS_VALUED, 0),
    "exec": (frozenset({"-a"}), 0),
    "nice": (frozenset({"-n", "--adjustment"}), 0),
    "command": (frozenset(), 0),
    "busybox": (frozenset(), 0),
    "time": (frozenset({"-f", "-o", "--format", "--output"}), 0),
    "setsid": (frozenset(), 0),
    "stdbuf": (frozenset({"-i", "-o", "-e", "--input", "--output", "--error"}), 0),
    "ionice": (frozenset({"-c", "-n", "-p", "-P", "-u", "--class", "--classdata"}), 0),
}
_HEREDOC_WORD = "__fluid_heredoc_{}__"
_HEREDOC_RE = re.compile(r"__fluid_heredoc_(\d+)__")
_OUTPUT_REDIRECTS = {">", ">>", ">|", "&>", "&>>", "<>", ">&"}


@dataclass
class _Heredoc:
    delimiter: str
    strip_tabs: bool
    expands: bool  # unquoted delimiter: $(...) and `...` in the body run
    body: str = ""


@dataclass
class _Parsed:
    commands: list[list[str]] = field(default_factory=list)
    redirects: list[tuple[str, str]] = field(default_factory=list)  # (operator, absolute target)


def simple_commands(command: str) -> list[list[str]]:
    """The argv of every simple command `command` would run, wrappers unwrapped (for tests and
    for logging what the guardrails saw)."""
    return _parse(command).commands


def _parse(command: str) -> _Parsed:
    collector = _Collector()
    collector.script(command)
    return collector.parsed


class _Collector:
    """Walks a command line (and every command nested in it) collecting simple commands."""

    def __init__(self) -> None:
        self.parsed = _Parsed()
        self.depth = 0
        self.heredocs: list[_Heredoc] = []
        self.source = ""  # the text bashlex positions refer to

    def script(self, text: str) -> None:
        if self.depth >= _MAX_DEPTH:
            raise GuardrailViolation(
                f"guardrails refused a command nested more than {_MAX_DEPTH} levels deep "
                "(bash -c, eval, $(...)); run the inner command directly"
            )
        self.depth += 1
        saved = self.heredocs
        try:
            stripped, self.heredocs = _preprocess(text)
            for doc in self.heredocs:
                if doc.expands:
                    for inner in _substitutions(doc.body):
                        self.script(inner)
            if stripped.strip():
                self._parse(stripped)
        finally:
            self.heredocs = saved
            self.depth -= 1

    def _parse(self, text: str) -> None:
        marks = len(self.parsed.commands), len(self.parsed.redirects)
        saved, self.source = self.source, text
        try:
            trees = bashlex.parse(text)
            for tree in trees:
                self._walk(tree)
        except GuardrailViolation:
            raise
        except Exception:  # bashlex rejects some valid bash (case, $((...)), [[ ]], ...)
            del self.parsed.commands[marks[0] :]
            del self.parsed.redirects[marks[1] :]
            self._fallback(text)
        finally:
            self.source = saved

    def _word(self, node: bashlex.ast.node) -> str:
        start, end = node.pos
        return _unquote(self.source[start:end])

    # bashlex ---------------------------------------------------------------------------------

    def _walk(self, node: bashlex.ast.node) -> None:
        kind = node.kind
        if kind == "command":
            self._command_node(node)
        elif kind in ("commandsubstitution", "processsubstitution"):
            self._walk(node.command)
        elif kind == "parameter":
            for inner in _substitutions(node.value):  # ${x:-$(cmd)} is not parsed by bashlex
                self.script(inner)
        elif kind == "redirect":
            self._redirect(node, [])
        elif kind == "heredoc":
            for inner in _substitutions(node.value):
                self.script(inner)
        else:
            for child in [*getattr(node, "parts", []), *getattr(node, "list", [])]:
                self._walk(child)
            for child in getattr(node, "redirects", []):
                self._walk(child)

    def _command_node(self, node: bashlex.ast.node) -> None:
        words: list[str] = []
        stdin: list[str] = []
        for part in node.parts:
            if part.kind in ("word", "assignment"):
                if part.kind == "word" or words:
                    words.append(self._word(part))
                for child in getattr(part, "parts", []):
                    self._walk(child)
            elif part.kind == "redirect":
                self._redirect(part, stdin)
            else:
                self._walk(part)
        self.command(words, stdin)

    def _redirect(self, node: bashlex.ast.node, stdin: list[str]) -> None:
        if getattr(node, "heredoc", None) is not None:
            self._walk(node.heredoc)
            stdin.append(node.heredoc.value)
        target = node.output
        if not isinstance(target, bashlex.ast.node) or target.kind != "word":
            return  # 2>&1 and the like: a file descriptor, not a file
        for child in getattr(target, "parts", []):
            self._walk(child)
        self.redirect_target(node.type, self._word(target), stdin)

    def redirect_target(self, op: str, target: str, stdin: list[str]) -> None:
        """Take one redirection: a here-document or here-string feeds `stdin`, an absolute
        output path is recorded as a redirect."""
        if op == "<" and (m := _HEREDOC_RE.fullmatch(target)):
            index = int(m.group(1))
            if index < len(self.heredocs):
                stdin.append(self.heredocs[index].body)
        elif op == "<<<":
            stdin.append(target)
        elif op in _OUTPUT_REDIRECTS and target.startswith("/"):
            self.parsed.redirects.append((op, target))

    # simple commands and wrappers -------------------------------------------------------------

    def command(self, words: list[str], stdin: Sequence[str] = ()) -> None:
        """Record one simple command, or the command(s) it wraps."""
        while words and _ASSIGNMENT.match(words[0]):
            words = words[1:]
        if not words:
            return
        prog, args = _program(words[0]), words[1:]
        if prog in _SHELLS:
            script, reads_stdin = _shell_script(args)
            if script is not None:
                self.script(script)
                return
            if reads_stdin and stdin:
                for text in stdin:
                    self.script(text)
                return
        elif prog == "eval" and args:
            self.script(" ".join(args))
            return
        elif prog == "su" and (script := _option_value(args, "-c", "--command")) is not None:
            self.script(script)
            return
        elif prog == "find":
            for inner in _find_exec(args):
                self.command(inner)
        elif prog in _WRAPPERS and (inner := _unwrap(prog, args)):
            if isinstance(inner, str):
                self.script(inner)  # env -S 'prog args'
            else:
                self.command(inner, stdin)
            return
        self.parsed.commands.append(words)

    # fallback ---------------------------------------------------------------------------------

    def _fallback(self, text: str) -> None:
        """Split on ; && || | & ( ) and newlines with shlex, for what bashlex cannot parse."""
        text = _ARITHMETIC.sub("0", text)
        text = _ARRAY_ASSIGNMENT.sub(r"\1_", text)
        lexer = shlex.shlex(text, posix=True, punctuation_chars=_PUNCTUATION)
        lexer.whitespace_split = True
        lexer.commenters = ""
        lexer.whitespace = " \t\r"
        try:
            tokens = list(lexer)
        except ValueError as e:
            raise GuardrailViolation(
                f"guardrails could not parse this command ({e}): close every quote and "
                "escape; for a long script, write it to a file with write_file and run "
                "`bash FILE`"
            ) from e
        _FallbackSplitter(self).run(tokens)


_PUNCTUATION = ";&|()<>\n"
# Longest first, so a run of punctuation splits greedily into bash's operators.
_OPERATORS = (
    ";;&", "&>>", "<<<", "&&", "||", ";;", ";&", "|&", ">>", ">|", "&>", ">&", "<&", "<>", "<<",
    ";", "&", "|", "(", ")", "<", ">", "\n",
)  # fmt: skip
_ARITHMETIC = re.compile(r"\$?\(\((?:[^()]|\([^()]*\))*\)\)")
_ARRAY_ASSIGNMENT = re.compile(r"((?:^|(?<=[\s;&|(]))[A-Za-z_][A-Za-z0-9_]*\+?=)\([^()]*\)")
# Words that start a line of shell syntax without being a program.
_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}",
             "esac", "coproc"}  # fmt: skip
_NOT_COMMANDS = {"case", "for", "select", "[[", "function"}


def _split_operators(token: str) -> list[str]:
    ops: list[str] = []
    while token:
        op = next(o for o in _OPERATORS if token.startswith(o))
        ops.append(op)
        token = token[len(op) :]
    return ops


class _FallbackSplitter:
    """Turns shlex tokens into simple commands, keeping $(...) inside the command it feeds."""

    def __init__(self, collector: _Collector) -> None:
        self.collector = collector
        self.segment: list[str] = []
        self.stack: list[tuple[list[str], bool]] = []  # (outer segment, is a $(...))
        self.stdin: list[str] = []
        self.redirect: str | None = None
        self.case_pattern = False  # inside `case`, expecting a pattern before `)`

    def run(self, tokens: list[str]) -> None:
        for token in tokens:
            if token and all(c in _PUNCTUATION for c in token):
                for op in _split_operators(token):
                    self.operator(op)
            elif self.redirect is not None:
                self.collector.redirect_target(self.redirect, token, self.stdin)
                self.redirect = None
            else:
                self.segment.append(token)
                for inner in _substitutions(token):
                    self.collector.script(inner)
        self.flush(None)
        while self.stack:
            self.segment, _ = self.stack.pop()
            self.flush(None)

    def operator(self, op: str) -> None:
        if op == "(" and self.redirect in ("<", ">"):
            self.redirect = None  # <(...) or >(...): the command is nested like $(...)
            self.stack.append((self.segment, True))
            self.segment = []
        elif op in _OUTPUT_REDIRECTS or op in ("<", "<<<", "<&", "<<"):
            self.redirect = op
        elif op == "(":
            dollar = bool(self.segment) and self.segment[-1].endswith("$")
            if dollar:
                self.segment[-1] = self.segment[-1][:-1]
                if not self.segment[-1]:
                    self.segment.pop()
            # `name (` can only be a function definition; its name is not a command.
            self.stack.append((self.segment if dollar else [], dollar))
            self.segment = []
        elif op == ")":
            if not self.stack:  # a case pattern such as `a)` or `a|b)`
                self.segment = []
                self.case_pattern = False
                return
            self.flush(op)
            self.segment, dollar = self.stack.pop()
            if dollar:
                self.segment.append("$(...)")
        elif self.case_pattern and op in ("|", "\n"):
            pass  # alternatives of a case pattern, or a blank line before it
        else:
            self.flush(op)
            if op in (";;", ";&", ";;&"):
                self.case_pattern = True

    def flush(self, terminator: str | None) -> None:
        words, self.segment = self.segment, []
        stdin, self.stdin = self.stdin, []
        self.redirect = None
        if words and words[0] == "esac":
            self.case_pattern = False
        while words and words[0] in _KEYWORDS:
            words = words[1:]
        if not words:
            return
        self.case_pattern = False
        if words[0] == "case":
            self.case_pattern = terminator != ")"
            return
        if words[0] in _NOT_COMMANDS:
            return
        self.collector.command(words, stdin)


def _shell_script(args: Sequence[str]) -> tuple[str | None, bool]:
    """For `bash ARGS`: the -c script if any, and whether the shell reads its script on stdin."""
    i, has_c, reads_stdin = 0, False, False
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
            i += 2
            continue
        if arg.startswith("--"):
            i += 1
            continue
        if arg[:1] in ("-", "+") and len(arg) > 1:
            has_c = has_c or (arg[0] == "-" and "c" in arg[1:])
            reads_stdin = reads_stdin or (arg[0] == "-" and "s" in arg[1:])
            i += 1
            continue
        break
    rest = args[i:]
    if has_c:
        return (rest[0] if rest else ""), False
    return None, reads_stdin or not rest


def _option_value(args: Sequence[str], short: str, long: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in (short, long) and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
        if arg.startswith(short) and not arg.startswith("--") and len(arg) > len(short):
            return arg[len(short) :]
    return None


def _unwrap(prog: str, args: Sequence[str]) -> list[str] | str | None:
    """The command a wrapper such as sudo or timeout runs (a string for env -S's script), or
    None if it runs none."""
    valued, positional = _WRAPPERS[prog]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if prog == "env" and arg in ("-S", "--split-string"):
            return args[i + 1] if i + 1 < len(args) else None
        if prog == "env" and arg.startswith(("-S", "--split-string=")):
            return arg.split("=", 1)[1] if arg.startswith("--") else arg[2:]
        if prog == "command" and arg in ("-v", "-V"):
            return None  # only looks the name up
        if prog in ("env", "sudo", "doas") and _ASSIGNMENT.match(arg):
            i += 1
            continue
        if arg.startswith("-") and len(arg) > 1:
            i += 2 if arg in valued else 1
            continue
        break
    rest = list(args[i:])
    while prog in ("env", "sudo", "doas") and rest and _ASSIGNMENT.match(rest[0]):
        rest = rest[1:]
    return rest[positional:] or None


def _find_exec(args: Sequence[str]) -> list[list[str]]:
    """The commands in find's -exec/-execdir/-ok/-okdir actions."""
    found: list[list[str]] = []
    current: list[str] | None = None
    for arg in args:
        if current is None:
            if arg in ("-exec", "-execdir", "-ok", "-okdir"):
                current = []
        elif arg in (";", "+"):
            found.append(current)
            current = None
        else:
            current.append(arg)
    if current:
        found.append(current)
    return [c for c in found if c]


# --- text scanning --------------------------------------------------------------------------


def _preprocess(text: str) -> tuple[str, list[_Heredoc]]:
    """Cut heredoc bodies and comments out of `text`, and join continued lines.

    Each `<<DELIM` becomes an input redirection from a placeholder word naming its heredoc.
    bashlex fails on quoted delimiters (<<'EOF', the form agents use to write files) and shlex
    would stumble on quotes in a body, so neither sees the bodies.
    """
    out: list[str] = []
    docs: list[_Heredoc] = []
    pending: list[_Heredoc] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if text.startswith("\n", i + 1):
                i += 2
                continue
            out.append(text[i : i + 2])
            i += 2
        elif c == "'" or (c == "$" and text.startswith("'", i + 1)):
            j = _quote_end(text, i + (2 if c == "$" else 1), "'", escapes=c == "$")
            out.append(text[i : j + 1])
            i = j + 1
        elif c == '"':
            j = _quote_end(text, i + 1, '"', escapes=True)
            out.append(text[i : j + 1])
            i = j + 1
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;&|()<>"):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("$((", i) or (text.startswith("((", i) and _word_start(text, i)):
            j = _paren_end(text, text.index("(", i))
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("<<<", i):
            out.append("<<<")
            i += 3
        elif text.startswith("<<", i) and (found := _read_delimiter(text, i + 2)):
            doc, i = found
            docs.append(doc)
            pending.append(doc)
            out.append("<" + _HEREDOC_WORD.format(len(docs) - 1))
        elif c == "\n" and pending:
            out.append("\n")
            i += 1
            for doc in pending:
                i = _read_body(text, i, doc)
            pending.clear()
        else:
            out.append(c)
            i += 1
    return "".join(out), docs


def _word_start(text: str, i: int) -> bool:
    return i == 0 or text[i - 1] in " \t\n;&|()"


def _quote_end(text: str, i: int, quote: str, *, escapes: bool) -> int:
    """Index of the quote closing a string whose body starts at `i` (end of text if none)."""
    while i < len(text):
        if escapes and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i
        if quote == '"' and text.startswith("$(", i):
            i = _paren_end(text, i + 1)  # "$(echo "x")" is one string
        i += 1
    return len(text) - 1


def _paren_end(text: str, i: int, close: str = ")") -> int:
    """Index of the bracket matching the one at `i`, skipping quoted text (end of text if
    none)."""
    opening = text[i]
    depth = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in "'\"":
            i = _quote_end(text, i + 1, c, escapes=c == '"') + 1
            continue
        if c == opening:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(text) - 1


_ANSI_C = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b",
           "f": "\f", "v": "\v"}  # fmt: skip


_ANSI_C_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)


def _ansi_c(m: re.Match[str]) -> str:
    """One backslash escape of a $'...' string, decoded."""
    code = m[1]
    if code in _ANSI_C:
        return _ANSI_C[code]
    if len(code) > 1 and code[0] == "x":
        return chr(int(code[1:], 16))
    if code[0] in "01234567":
        return chr(int(code, 8))
    return code


def _unquote(word: str) -> str:
    """A shell word's text after quote removal, with expansions ($x, $(...)) left as written.

    bashlex's own quote removal mangles words that mix quoting styles ('a'"'"'b').
    """
    out: list[str] = []
    i, n = 0, len(word)
    while i < n:
        c = word[i]
        if c == "\\":
            if not word.startswith("\n", i + 1):
                out.append(word[i + 1 : i + 2])
            i += 2
        elif c == "'":
            j = _quote_end(word, i + 1, "'", escapes=False)
            out.append(word[i + 1 : j])
            i = j + 1
        elif word.startswith("$'", i):
            j = _quote_end(word, i + 2, "'", escapes=True)
            out.append(_ANSI_C_ESCAPE.sub(_ansi_c, word[i + 2 : j]))
            i = j + 1
        elif c == '"' or word.startswith('$"', i):
            start = i + (2 if c == "$" else 1)
            j = _quote_end(word, start, '"', escapes=True)
            out.append(re.sub(r'\\([$`"\\])|\\\n', r"\1", word[start:j]))
            i = j + 1
        elif word.startswith(("$(", "${"), i):
            j = _paren_end(word, i + 1, ")" if word[i + 1] == "(" else "}")
            out.append(word[i : j + 1])
            i = j + 1
        elif c == "`":
            j = _quote_end(word, i + 1, "`", escapes=True)
            out.append(word[i : j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _read_delimiter(text: str, i: int) -> tuple[_Heredoc, int] | None:
    """The heredoc whose operator ends just before `i`, and the index after its delimiter."""
    n = len(text)
    strip_tabs = text.startswith("-", i)
    if strip_tabs:
        i += 1
    while i < n and text[i] in " \t":
        i += 1
    delimiter: list[str] = []
    quoted = False
    start = i
    while i < n and text[i] not in " \t\n;&|()<>":
        c = text[i]
        if c in "'\"":
            j = _quote_end(text, i + 1, c, escapes=c == '"')
            delimiter.append(text[i + 1 : j])
            quoted, i = True, j + 1
        elif c == "\\":
            delimiter.append(text[i + 1 : i + 2])
            quoted, i = True, i + 2
        else:
            delimiter.append(c)
            i += 1
    if i == start:
        return None
    return _Heredoc("".join(delimiter), strip_tabs, expands=not quoted), i


def _read_body(text: str, i: int, doc: _Heredoc) -> int:
    """Fill `doc.body` from the line starting at `i`; the index after its delimiter line."""
    lines: list[str] = []
    n = len(text)
    while i < n:
        j = text.find("\n", i)
        end = n if j < 0 else j
        line = text[i:end]
        i = end + 1
        if doc.strip_tabs:
            line = line.lstrip("\t")
        if line == doc.delimiter:
            break
        lines.append(line)
    doc.body = "\n".join(lines)
    return min(i, n)


def _substitutions(text: str) -> list[str]:
    """The commands inside $(...) and `...` in `text` (quotes ignored: conservative)."""
    found: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
        elif text.startswith("$((", i):
            i += 3  # arithmetic; a $(...) inside it is still found
        elif text.startswith("$(", i):
            j = _paren_end(text, i + 1)
            found.append(text[i + 2 : j])
            i = j + 1
        elif text[i] == "`":
            j = i + 1
            while j < n and text[j] != "`":
                j += 2 if text[j] == "\\" else 1
            found.append(text[i + 1 : j])
            i = j + 1
        else:
            i += 1
    return [f for f in found if f.strip()]
