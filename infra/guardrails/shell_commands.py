"""What a command line runs: every simple command (as its argv) and every output redirection,
found with bashlex wherever bash would run them.

That is inside pipelines, lists, subshells, $(...) and backticks, process substitutions,
if/while/for bodies, functions, heredocs fed to a shell, and through wrappers (bash -c, sudo,
env, timeout, xargs, ...). A quoted string is an argument, never a command: `echo "rm -rf /"`
is harmless. Where bashlex cannot parse valid bash (case, arithmetic, [[ ]]), a shlex-based
splitter takes over. The text itself is scanned by `shell_text`; bashlex is used only here,
with `bashlex_fix` applied.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

import bashlex
import bashlex.ast

from infra.guardrails import bashlex_fix
from infra.guardrails.argv import option_value, program_name
from infra.guardrails.errors import GuardrailViolation
from infra.guardrails.shell_text import (
    Heredoc,
    heredoc_index,
    preprocess,
    substitutions,
    unquote,
)

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
_OUTPUT_REDIRECTS = {">", ">>", ">|", "&>", "&>>", "<>", ">&"}


@dataclass
class ParsedCommand:
    """What a command line runs: each simple command's argv, and its output redirections."""

    commands: list[list[str]] = field(default_factory=list)
    redirects: list[tuple[str, str]] = field(default_factory=list)  # (operator, absolute target)


def simple_commands(command: str) -> list[list[str]]:
    """The argv of every simple command `command` would run, wrappers unwrapped (for tests and
    for logging what the guardrails saw)."""
    return parse(command).commands


def parse(command: str) -> ParsedCommand:
    """Every simple command and output redirection in `command`, or GuardrailViolation when no
    parser understands it or it nests too deep."""
    collector = _Collector()
    collector.script(command)
    return collector.parsed


class _Collector:
    """Walks a command line (and every command nested in it) collecting simple commands."""

    def __init__(self) -> None:
        self.parsed = ParsedCommand()
        self.depth = 0
        self.heredocs: list[Heredoc] = []
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
            stripped, self.heredocs = preprocess(text)
            for doc in self.heredocs:
                if doc.expands:
                    for inner in substitutions(doc.body):
                        self.script(inner)
            if stripped.strip():
                self._parse(stripped)
        finally:
            self.heredocs = saved
            self.depth -= 1

    def _parse(self, text: str) -> None:
        marks = len(self.parsed.commands), len(self.parsed.redirects)
        saved, self.source = self.source, text
        # bashlex is used nowhere else: its fix goes in before the first parse (a no-op after).
        bashlex_fix.apply()
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
        return unquote(self.source[start:end])

    # bashlex ---------------------------------------------------------------------------------

    def _walk(self, node: bashlex.ast.node) -> None:
        kind = node.kind
        if kind == "command":
            self._command_node(node)
        elif kind in ("commandsubstitution", "processsubstitution"):
            self._walk(node.command)
        elif kind == "parameter":
            for inner in substitutions(node.value):  # ${x:-$(cmd)} is not parsed by bashlex
                self.script(inner)
        elif kind == "redirect":
            self._redirect(node, [])
        elif kind == "heredoc":
            for inner in substitutions(node.value):
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
        if op == "<" and (index := heredoc_index(target)) is not None:
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
        prog, args = program_name(words[0]), words[1:]
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
        elif (
            prog == "su"
            and (script := option_value(args, "-c", "--command", stop_at_double_dash=False))
            is not None
        ):
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
                for inner in substitutions(token):
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
