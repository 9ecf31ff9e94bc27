"""Errors raised by the data layer. Each message names the file, table, column or row and says how to fix it."""

from __future__ import annotations


class CohortError(ValueError):
    """A cohort folder or table is missing, malformed or inconsistent."""


class SourceError(ValueError):
    """A raw source file (CSV, Parquet, archive, image) cannot be read into a cohort."""


class UnknownLabelError(CohortError, KeyError):
    """A label the cohort does not have (a ``ValueError`` like every bad-input error; also a ``KeyError``, as a
    name looked up in the cohort's labels)."""

    def __str__(self) -> str:  # the plain message, not KeyError's quoted repr
        return str(self.args[0]) if self.args else ""

