"""A fix for bashlex 0.18, which loops forever on a word holding `${` without a `}`.

Upstream, `bashlex.subst._paramexpand` looks for the `}` closing `${` with `str.find`; when
there is none (`echo a'${'`: quoted, so valid bash) it gets -1 and returns a position at or
before the one it started from, and the word expansion calling it rewinds and scans the same
text again, forever. A guardrail check that never returns would hang the agent's tool call, so
`apply()` wraps the function to raise bashlex's ParsingError instead; the shell parser then
falls back to its own splitter, as for any bash bashlex rejects. bashlex has no public hook for
this, hence the patch of its private function; it is applied only through `apply()`.
"""

from __future__ import annotations

import bashlex.errors
import bashlex.subst

_upstream_paramexpand = bashlex.subst._paramexpand


def _paramexpand_or_fail(parserobj: object, string: str, sindex: int) -> tuple[object, int]:
    node, end = _upstream_paramexpand(parserobj, string, sindex)
    if end <= sindex:  # no progress: upstream would rewind and loop
        raise bashlex.errors.ParsingError("unterminated ${", string, sindex)
    return node, end


def apply() -> None:
    """Make bashlex fail on an unterminated `${` instead of looping; calling it again is a
    no-op."""
    if bashlex.subst._paramexpand is not _paramexpand_or_fail:
        bashlex.subst._paramexpand = _paramexpand_or_fail
