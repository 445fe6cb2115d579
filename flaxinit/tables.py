"""Plain-text tables: the one renderer behind every report's ``str``.

Columns are separated by two spaces, a row of dashes follows the header, trailing spaces
are dropped. Text columns are left-aligned; the columns named in ``right`` (numbers) are
right-aligned.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["format_table"]


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """An aligned plain-text table.

    Args:
      headers: the column names.
      rows: the cells, strings, one sequence per row, as many cells as headers.
      right: indices of the columns to right-align (negative indices count from the end).

    Example:
      >>> print(format_table(["layer", "std"], [["Dense_0", "1.02"], ["head", "0.5"]], right=[1]))
      layer     std
      -------  ----
      Dense_0  1.02
      head      0.5
    """
    n = len(headers)
    right = {i % n for i in right} if n else set()
    for row in rows:
        if len(row) != n:
            raise ValueError(f"format_table: a row has {len(row)} cells for {n} headers: {row!r}")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
