"""Issue 6's goals, read from bench_sandbox's rows, and the table they are printed as."""

from __future__ import annotations

from dataclasses import dataclass

from bench.results import Results, median
from bench.sandbox.context import (
    A_CLONE,
    A_COLD,
    A_WARM,
    C_FLUID,
    C_FLUID_NAMED,
    C_VIRT_DIFF,
    CONCURRENT,
    Bench,
)

WARM_GOAL_S = 3.0
WARM_RATIO = 5.0
DIFF_RATIO = 10.0


@dataclass
class Goal:
    """One row of the goals table."""

    goal: str
    measured: str
    ratio: str
    ok: bool


def _ratio_goal(goal: str, fast: float | None, slow: float | None, need: float, names: str) -> Goal:
    if fast is None or slow is None:
        return Goal(goal, "not measured", "-", False)
    ratio = slow / fast
    return Goal(goal, f"{names}: {fast:.2f} s vs {slow:.2f} s", f"{ratio:.1f}x", ratio >= need)


def reported_goal(b: Bench) -> Goal:
    """fluid's change set names the nginx package and its service; virt-diff has files only."""
    goal = "C: packages and services reported (virt-diff: files only)"
    cs = b.changeset
    if cs is None:
        return Goal(goal, "not measured", "-", False)
    pkgs = [c.key for c in cs.of("packages")]
    svcs = [c.key for c in cs.of("services")]
    shown = f"fluid: packages {', '.join(pkgs) or 'none'}; services {', '.join(svcs) or 'none'}"
    if b.virt_diff_lines is not None:
        shown += f"; virt-diff: {b.virt_diff_lines} file lines"
    ok = "nginx" in pkgs and any(k.startswith("nginx") for k in svcs)
    return Goal(goal, shown, f"{len(cs.changes)} changes", ok)


def goals(parts: set[str], res: dict[str, Results], b: Bench | None) -> list[Goal]:
    """The goals of the parts that ran, from their rows."""
    out: list[Goal] = []
    if "A" in parts:
        a = res["A"]
        warm, cold, clone = median(a, A_WARM), median(a, A_COLD), median(a, A_CLONE)
        out.append(
            Goal(
                f"A: warm create -> SSH-ready median <= {WARM_GOAL_S:.0f} s",
                "not measured",
                "-",
                False,
            )
            if warm is None
            else Goal(
                f"A: warm create -> SSH-ready median <= {WARM_GOAL_S:.0f} s",
                f"{warm:.2f} s",
                f"{warm / WARM_GOAL_S:.2f}x the limit",
                warm <= WARM_GOAL_S,
            )
        )
        out.append(
            _ratio_goal(
                f"A: warm >= {WARM_RATIO:.0f}x faster than fluid's cold boot",
                warm,
                cold,
                WARM_RATIO,
                "warm vs cold",
            )
        )
        out.append(
            _ratio_goal(
                f"A: warm >= {WARM_RATIO:.0f}x faster than virt-clone + boot",
                warm,
                clone,
                WARM_RATIO,
                "warm vs virt-clone",
            )
        )
    if "B" in parts:
        row = res["B"].rows.get("sandboxes answering")
        n = int(row.samples[-1]) if row else 0
        rss = median(res["B"], "qemu RSS per sandbox")
        pss = median(res["B"], "qemu PSS per sandbox")
        mem = f", qemu RSS {rss:.0f} / PSS {pss:.0f} MiB each" if rss and pss else ""
        out.append(
            Goal(
                f"B: {CONCURRENT} sandboxes running at once all answer",
                f"{n} of {CONCURRENT} answered{mem}",
                "-",
                n == CONCURRENT,
            )
        )
    if "C" in parts:
        out.append(
            _ratio_goal(
                f"C: both captures + diff >= {DIFF_RATIO:.0f}x faster than virt-diff",
                median(res["C"], C_FLUID) or median(res["C"], C_FLUID_NAMED),
                median(res["C"], C_VIRT_DIFF),
                DIFF_RATIO,
                "fluid vs virt-diff",
            )
        )
        if b is not None:
            out.append(reported_goal(b))
    return out


def goals_table(gs: list[Goal]) -> str:
    """The goals as a markdown table."""
    rows = [("goal", "measured", "ratio", "pass")] + [
        (g.goal, g.measured, g.ratio, "yes" if g.ok else "NO") for g in gs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    render = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    render.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(render)
