"""Scanning shell text as bash reads it: quotes and escapes, heredocs and comments cut out,
quote removal, and the commands inside $(...) and backticks. It finds where things are; which
commands they are is `shell_commands`'s business."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class Heredoc:
    """One here-document: its delimiter and, once read, its body."""

    delimiter: str
    strip_tabs: bool
    expands: bool  # unquoted delimiter: $(...) and `...` in the body run
    body: str = ""


_HEREDOC_WORD = "__fluid_heredoc_{}__"
_HEREDOC_RE = re.compile(r"__fluid_heredoc_(\d+)__")


def heredoc_index(word: str) -> int | None:
    """Which heredoc of `preprocess`'s list the placeholder `word` stands for, or None."""
    m = _HEREDOC_RE.fullmatch(word)
    return int(m.group(1)) if m else None


def preprocess(text: str) -> tuple[str, list[Heredoc]]:
    """Cut heredoc bodies and comments out of `text`, and join continued lines.

    Each `<<DELIM` becomes an input redirection from a placeholder word naming its heredoc.
    bashlex fails on quoted delimiters (<<'EOF', the form agents use to write files) and shlex
    would stumble on quotes in a body, so neither sees the bodies.
    """
    out: list[str] = []
    docs: list[Heredoc] = []
    pending: list[Heredoc] = []
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


def unquote(word: str) -> str:
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


def _read_delimiter(text: str, i: int) -> tuple[Heredoc, int] | None:
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
    return Heredoc("".join(delimiter), strip_tabs, expands=not quoted), i


def _read_body(text: str, i: int, doc: Heredoc) -> int:
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


def substitutions(text: str) -> list[str]:
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
