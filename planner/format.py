"""Human-readable numbers and aligned tables for the CLI."""

from __future__ import annotations

from collections.abc import Sequence

_SUFFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (counts: K, M, B, T); with a unit SI prefixes: 8e10, 'B' -> '80.00 GB'."""
    for scale, suffix in _SUFFIXES:
        if abs(n) >= scale:
            if unit and suffix == "B":
                suffix = "G"
            return f"{n / scale:.2f} {suffix}{unit}".rstrip()
    return f"{n:g} {unit}".rstrip()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """An aligned plain-text table; ``align`` has one 'l' or 'r' per column (default: first left)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    fmt = lambda row: "  ".join(  # noqa: E731
        c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)
    ).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(cells[0]), rule, *map(fmt, cells[1:])])


class Progress:
    """A one-line progress bar on a stream (stderr): ``[#####.....] 12/24 label``."""

    def __init__(self, total: int, stream, width: int = 30):
        self.total, self.stream, self.width, self.done = total, stream, width, 0

    def step(self, label: str = "") -> None:
        self.done += 1
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        end = "\n" if self.done >= self.total else ""
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label[:60]:<60}{end}")
        self.stream.flush()
