"""Row accounting: what happened to every input row of every source table.

Each reader records, per source table, the rows it read and, for each, whether it was used or dropped and why.
:meth:`RowAccounting.check` verifies that ``read == used + sum(dropped)`` for every table, so nothing disappears
silently.

Example::

    acc = RowAccounting()
    acc.read("events", 100)
    acc.drop("events", "implausible value", 3)
    acc.use("events", 97)
    acc.check()
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd


class AccountingError(ValueError):
    """Rows of a source table are unaccounted for (read != used + dropped)."""


@dataclass
class TableCount:
    read: int = 0
    used: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())


class RowAccounting:
    """Counts per source table: rows read, used, and dropped by reason."""

    def __init__(self):
        self.tables: dict[str, TableCount] = {}

    def _t(self, table: str) -> TableCount:
        return self.tables.setdefault(table, TableCount())

    def read(self, table: str, n: int) -> None:
        self._t(table).read += int(n)

    def use(self, table: str, n: int) -> None:
        self._t(table).used += int(n)

    def drop(self, table: str, reason: str, n: int) -> None:
        """Record ``n`` rows of ``table`` dropped for ``reason`` (zero counts are kept out of the table)."""
        if n:
            t = self._t(table)
            t.dropped[reason] = t.dropped.get(reason, 0) + int(n)

    def check(self) -> None:
        """Raise :class:`AccountingError` if any table's rows do not sum (read = used + dropped)."""
        for name, t in self.tables.items():
            if t.read != t.used + t.n_dropped:
                raise AccountingError(
                    f"Row accounting for {name!r} does not sum: read {t.read}, used {t.used}, "
                    f"dropped {t.n_dropped} {t.dropped}. This is a bug in the reader; please report it."
                )

    def merge(self, other: RowAccounting) -> RowAccounting:
        for name, t in other.tables.items():
            self.read(name, t.read)
            self.use(name, t.used)
            for reason, n in t.dropped.items():
                self.drop(name, reason, n)
        return self

    def to_frame(self) -> pd.DataFrame:
        """One row per (table, outcome): columns table, outcome ("used" or "dropped: <reason>"), rows."""
        rows = []
        for name, t in self.tables.items():
            rows.append({"table": name, "outcome": "read", "rows": t.read})
            rows.append({"table": name, "outcome": "used", "rows": t.used})
            for reason, n in sorted(t.dropped.items()):
                rows.append({"table": name, "outcome": f"dropped: {reason}", "rows": n})
        return pd.DataFrame(rows, columns=["table", "outcome", "rows"])

    def to_dict(self) -> dict:
        return {n: {"read": t.read, "used": t.used, "dropped": dict(t.dropped)} for n, t in self.tables.items()}

    @classmethod
    def from_dict(cls, d: dict) -> RowAccounting:
        acc = cls()
        for name, t in d.items():
            acc.tables[name] = TableCount(int(t["read"]), int(t["used"]), {k: int(v) for k, v in t["dropped"].items()})
        return acc


#: reasons that depend on which stays a reader was given: a row of another partition's stay gets one of them
PARTITION_REASONS = ("stay not in cohort", "subject not in cohort")


def combine_partitions(parts: list[RowAccounting], shared: tuple[str, ...] | Mapping[str, tuple[str, ...]] = (
                       "unmapped item",), partition_reasons: tuple[str, ...] = PARTITION_REASONS,
                       additive: tuple[str, ...] = ()) -> RowAccounting:
    """The row accounting of one read of the tables, from the accountings of ``parts``, reads of the same tables
    each restricted to its own (disjoint) stays.

    Every part reads every row, so each row gets one outcome per part. Reasons in ``shared`` are checked before a
    row's stay is looked up: a row dropped for one of them is dropped so by every part, and is counted once. A row
    of a partition's stay is used, or dropped for a later reason, by that partition only: those counts are summed.
    What remains of the rows read (rows of no partition's stay) is the table's reason of ``partition_reasons``.

    A table in ``additive`` is made from the rows a partition kept (e.g. the values of the vital-sign rows of its
    stays): its partitions read different rows, and every count is summed.

    Parameters
    ----------
    parts : list of RowAccounting
        One per partition, each of which passed :meth:`RowAccounting.check`.
    shared : tuple of str, or mapping of table -> tuple of str
        The reasons checked before the stay lookup, for every table or per table (tables not in the mapping:
        none).
    partition_reasons : tuple of str
    additive : tuple of str

    Returns
    -------
    RowAccounting
        Equal to the accounting of one read of the tables with all the stays.

    Raises
    ------
    AccountingError
        If the parts did not read the same tables and rows, disagree on a ``shared`` reason, or their counts
        leave a negative remainder (a row used by two partitions: the partitions were not disjoint).
    """
    if not parts:
        raise ValueError("combine_partitions needs at least one part.")
    out = RowAccounting()
    names = list(dict.fromkeys(name for part in parts for name in part.tables))
    read_by_all = sorted(n for n in names if n not in additive)
    for i, part in enumerate(parts):
        if sorted(n for n in part.tables if n not in additive) != read_by_all:
            raise AccountingError(f"Partition {i} read tables {sorted(part.tables)}, the others {read_by_all}; "
                                  "every partition must read the same tables.")
    for name in names:
        counts = [p.tables[name] for p in parts if name in p.tables]
        if name in additive:
            out.read(name, sum(t.read for t in counts))
            out.use(name, sum(t.used for t in counts))
            for reason in sorted({r for t in counts for r in t.dropped}):
                out.drop(name, reason, sum(t.dropped.get(reason, 0) for t in counts))
            continue
        before = shared.get(name, ()) if isinstance(shared, Mapping) else shared
        first = counts[0]
        for i, t in enumerate(counts[1:], start=1):
            same = t.read == first.read and all(t.dropped.get(r, 0) == first.dropped.get(r, 0) for r in before)
            if not same:
                raise AccountingError(
                    f"Partitions 0 and {i} of table {name!r} disagree on rows read or dropped for {list(before)}: "
                    f"{first.read} {first.dropped} vs {t.read} {t.dropped}. Each partition must read the whole table.")
        out.read(name, first.read)
        out.use(name, sum(t.used for t in counts))
        for reason in before:
            out.drop(name, reason, first.dropped.get(reason, 0))
        later = {r for t in counts for r in t.dropped if r not in before and r not in partition_reasons}
        for reason in sorted(later):
            out.drop(name, reason, sum(t.dropped.get(reason, 0) for t in counts))
        rest = first.read - out.tables[name].used - out.tables[name].n_dropped
        seen = [r for r in partition_reasons if any(r in t.dropped for t in counts)]
        if rest < 0 or (rest > 0 and not seen):
            raise AccountingError(f"Partitions of table {name!r} account for {first.read - rest} of its {first.read} "
                                  "rows; the partitions' stays overlap. Partition stays by patient.")
        if rest:
            out.drop(name, seen[0], rest)
    out.check()
    return out
