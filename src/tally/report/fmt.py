"""How numbers appear in the report: one function per kind of figure, so that every figure
in report.md is its value in results.json put through one of these."""

from __future__ import annotations

from collections.abc import Sequence

NA = "n/a"


def secs(x: float | None) -> str:
    """Seconds: 3 decimals."""
    return NA if x is None else f"{x:.3f}"


def ratio(x: float | None) -> str:
    """Speedups and ratios: 2 decimals."""
    return NA if x is None else f"{x:.2f}"


def pct(x: float | None) -> str:
    """A fraction as a whole percentage."""
    return NA if x is None else f"{x * 100:.0f}%"


def pct1(x: float | None) -> str:
    """A fraction as a percentage with 1 decimal (spreads and thresholds)."""
    return NA if x is None else f"{x * 100:.1f}%"


def mb(nbytes: float | None) -> str:
    """Bytes as decimal megabytes, 1 decimal."""
    return NA if nbytes is None else f"{nbytes / 1e6:.1f}"


def rate(mb_s: float | None) -> str:
    """MB/s (or any rate), 1 decimal."""
    return NA if mb_s is None else f"{mb_s:.1f}"


def ms(x: float | None) -> str:
    """Milliseconds: 3 decimals."""
    return NA if x is None else f"{x:.3f}"


def usd(x: float | None) -> str:
    """Dollars: 3 significant digits below $1000, whole dollars above."""
    if x is None:
        return NA
    return f"${x:.3g}" if x < 1000 else f"${x:,.0f}"


def count(x: int | None) -> str:
    return NA if x is None else str(x)


def workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; cells must not contain ``|``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
