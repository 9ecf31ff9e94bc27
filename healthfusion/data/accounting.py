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
