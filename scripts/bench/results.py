"""Shared by the benchmark scripts: timed samples printed as one markdown table, and the errors
that end a run."""

from __future__ import annotations

import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TypeVar

T = TypeVar("T")


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


class SetupError(BenchError):
    """The host cannot run the benchmark (exit status 2); the message says how to fix it."""


@dataclass
class Row:
    """One step's samples, all in one unit."""

    step: str
    unit: str
    samples: list[float] = field(default_factory=list)


class Results:
    """Samples per step, printed as one markdown table in insertion order."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def add(self, step: str, value: float, unit: str) -> None:
        """Record one sample, already in `unit`."""
        self.rows.setdefault(step, Row(step, unit)).samples.append(value)

    def timed(self, step: str, unit: str, fn: Callable[[], T]) -> T:
        """Run fn, record its wall time in `unit` ("s" or "ms"), return its result."""
        scale = 1000.0 if unit == "ms" else 1.0
        start = time.perf_counter()
        out = fn()
        elapsed = (time.perf_counter() - start) * scale
        self.add(step, elapsed, unit)
        log(f"{step}: {elapsed:.1f} {unit}")
        return out

    def table(self) -> str:
        """The rows as a markdown table: step, n, median, min, max, unit."""
        header = ("step", "n", "median", "min", "max", "unit")
        lines = [header]
        for r in self.rows.values():
            if r.samples:
                lines.append(
                    (
                        r.step,
                        str(len(r.samples)),
                        _fmt(statistics.median(r.samples)),
                        _fmt(min(r.samples)),
                        _fmt(max(r.samples)),
                        r.unit,
                    )
                )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        right = {1, 2, 3, 4}

        def render(cells: tuple[str, ...]) -> str:
            padded = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "| " + " | ".join(padded) + " |"

        sep = (
            "|"
            + "|".join(
                "-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)
            )
            + "|"
        )
        return "\n".join([render(lines[0]), sep, *(render(line) for line in lines[1:])])


def failure(e: BaseException) -> tuple[str, int]:
    """The error line and exit status of what ended a run: 130 interrupted, 2 setup, else 1."""
    if isinstance(e, KeyboardInterrupt):
        return f"interrupted ({str(e) or 'Ctrl-C'})", 130
    if isinstance(e, SetupError):
        return f"setup: {e}", 2
    return f"{type(e).__name__}: {e}", 1


def timed(res: Results, step: str, unit: str, fn: Callable[[], T]) -> tuple[T, float]:
    """res.timed, also returning the sample just recorded."""
    out = res.timed(step, unit, fn)
    return out, res.rows[step].samples[-1]


def median(res: Results, step: str) -> float | None:
    """The median of a row's samples; None when the row was not measured."""
    row = res.rows.get(step)
    return statistics.median(row.samples) if row and row.samples else None


def _fmt(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def log(msg: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every finally block (VM cleanup) runs."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Let cleanup finish: a second Ctrl-C or SIGTERM must not leave a VM behind."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
