"""Plain-text tables and record reports: the one renderer behind every report's ``str``.

Columns are separated by two spaces, a row of dashes follows the header, trailing spaces
are dropped. Text columns are left-aligned; the columns named in ``right`` (numbers) are
right-aligned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["RecordTable", "format_table"]

Record = TypeVar("Record")


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


@dataclasses.dataclass(frozen=True)
class RecordTable(Sequence[Record], Generic[Record]):
    """The base of every report that is a sequence of records with a table as its ``str``.

    A frozen dataclass holding ``records`` (a tuple); subclasses are frozen dataclasses
    that add their own fields and give the table through :meth:`headers` and :meth:`row`
    (and :attr:`right` for right-aligned columns); :meth:`title` and :meth:`footer`
    add lines above and below it.

    Example:
      >>> @dataclasses.dataclass(frozen=True)
      ... class Sizes(RecordTable[tuple[str, int]]):
      ...     right = (1,)
      ...     def headers(self): return ["name", "size"]
      ...     def row(self, record): return [record[0], str(record[1])]
      >>> sizes = Sizes((("kernel", 12), ("bias", 3)))
      >>> len(sizes), sizes[1], [name for name, _ in sizes]
      (2, ('bias', 3), ['kernel', 'bias'])
      >>> print(sizes)
      name    size
      ------  ----
      kernel    12
      bias       3
    """

    records: tuple[Record, ...]

    right: ClassVar[Collection[int]] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", tuple(self.records))

    def __getitem__(self, index: Any) -> Any:
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def headers(self) -> Sequence[str]:
        """The column names."""
        raise NotImplementedError

    def row(self, record: Record) -> Sequence[str]:
        """One record's cells."""
        raise NotImplementedError

    def title(self) -> str | None:
        """A line above the table, or None."""
        return None

    def footer(self) -> Sequence[str]:
        """Lines below the table."""
        return ()

    def __str__(self) -> str:
        rows = [list(self.row(r)) for r in self.records]
        title = self.title()
        lines = [] if title is None else [title]
        lines.append(format_table(self.headers(), rows, right=self.right) if rows else "(empty)")
        lines.extend(self.footer())
        return "\n".join(lines)
