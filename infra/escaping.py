"""Guest text rendered for people: Markdown for the Prefect UI, plain text for a terminal.

Everything a sandbox reports (file names, contents, user names, command output) is written by
whoever controls the guest. Rendered raw, a file name with a newline and `# No changes` forges
a heading in the reviewer's diff, `<img onerror=...>` reaches the UI's HTML renderer, and an
ESC sequence rewrites the operator's terminal. One rule per output:

* Markdown text (`md_text`, also for table cells): controls shown as `\\xNN`, `<`, `>` and `&`
  as HTML entities, every other ASCII punctuation mark that Markdown gives a meaning
  backslash-escaped. Such text can start no block (heading, list item, table row, quote,
  fence) and no inline construct (emphasis, link, code span, tag, autolink).
* Markdown code spans (`md_code`): controls shown, a backtick fence longer than any run of
  backticks inside, pipes escaped when the span sits in a table row.
* Markdown code blocks (`md_block`): controls but newline and tab shown, a fence longer than
  any run of backticks inside, so no line of the text can close it.
* Terminal (`term_line`, `term_text`, `term_bytes`): C0 and C1 controls, DEL and Unicode
  direction overrides shown as `\\xNN`/`\\uNNNN`; `term_text` keeps newlines and tabs.

Both Prefect UIs (v1 and v2) render these escapes as the literal characters.
"""

from __future__ import annotations

import re

# Characters that steer a terminal or hide what text says: C0 and C1 controls, DEL, Unicode
# line and paragraph separators, direction overrides and zero-width characters.
_HIDDEN = (
    "\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
    # Bytes that are not UTF-8, as Python's surrogateescape error handler decodes them.
    "\udc80-\udcff"
)
_HIDDEN_RE = re.compile(f"[{_HIDDEN}]")
_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# ASCII punctuation with a meaning somewhere in CommonMark or GFM (`<`, `>`, `&` are entities).
_MD_PUNCT = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=^$\"':])")
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _show(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str, keep: str = "") -> str:
    """`text` with every control, direction override and zero-width character shown as an
    escape (`\\n`, `\\x1b`, `\\u202e`); characters in `keep` (e.g. "\\n\\t") stay as they are."""
    return _HIDDEN_RE.sub(lambda m: m.group() if m.group() in keep else _show(m.group()), text)


def md_text(text: str) -> str:
    """`text` as literal inline Markdown: it renders as written and starts nothing."""
    shown = visible(str(text))
    shown = _MD_PUNCT.sub(r"\\\1", shown)
    return re.sub(r"[&<>]", lambda m: _MD_ENTITIES[m.group()], shown)


def md_code(text: str, *, table: bool = False) -> str:
    """`text` as one Markdown code span (`table=True`: for a cell of a GFM table row)."""
    shown = visible(str(text))
    if table:
        # GFM splits a row at every unescaped pipe, code spans included; `\\|` keeps one.
        shown = shown.replace("|", "\\|")
    if not shown.strip(" "):
        return "` `" if not shown else f"`{shown}`"
    longest = max((len(run) for run in re.findall(r"`+", shown)), default=0)
    fence = "`" * (longest + 1)
    # A span that starts or ends with a backtick needs a space between it and its fence;
    # CommonMark strips one space from each end of a span that has one at both.
    edges = shown[0] + shown[-1]
    pad = " " if "`" in edges or edges == "  " else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def md_block(text: str, lang: str = "") -> str:
    """`text` as a fenced Markdown code block that no line of it can close."""
    shown = visible(str(text), keep="\n\t")
    longest = max((len(run) for run in re.findall(r"`+", shown)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{shown}\n{fence}"


def term_line(text: str) -> str:
    """`text` for one line of a terminal: every control shown, newlines and tabs included."""
    return visible(str(text))


def term_text(text: str) -> str:
    """`text` for a terminal, several lines allowed: every control shown but newline and tab."""
    return visible(str(text), keep="\n\t")


def term_bytes(data: bytes) -> bytes:
    """Output bytes for a terminal: controls shown but newline and tab; other bytes as they
    are (bytes that are not UTF-8 too, except the 8-bit C1 controls a terminal may obey)."""
    text = data.decode("utf-8", errors="surrogateescape")
    shown = _HIDDEN_RE.sub(
        lambda m: (
            m.group()
            if m.group() in "\n\t" or "\udca0" <= m.group() <= "\udcff"
            else _show(m.group())
        ),
        text,
    )
    return shown.encode("utf-8", errors="surrogateescape")
