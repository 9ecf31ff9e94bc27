"""Errors raised by the data layer. Each message names the file, table, column or row and says how to fix it."""

from __future__ import annotations


class CohortError(ValueError):
    """A cohort folder or table is missing, malformed or inconsistent."""


class SourceError(ValueError):
    """A raw source file (CSV, Parquet, archive, image) cannot be read into a cohort."""
