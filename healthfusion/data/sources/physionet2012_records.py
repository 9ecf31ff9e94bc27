"""PhysioNet 2012 record files: read every ``<RecordID>.txt`` of a set folder or archive and parse them in one
pass (used by :mod:`healthfusion.data.sources.physionet2012`)."""

from __future__ import annotations

import io
import logging
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from healthfusion.data.errors import SourceError
from healthfusion.data.sources.read_errors import READ_ERRORS, first_non_utf8, read_error, reading

log = logging.getLogger(__name__)

HEADER = "Time,Parameter,Value"
_TIME = re.compile(r"^\s*(\d+):(\d{2})\s*$")


def record_set_name(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def iter_record_files(path: Path, progress: bool) -> Iterator[tuple[str, str, bytes]]:
    """(display name, RecordID, bytes) of every ``<RecordID>.txt`` of a set folder or archive."""
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.stem.isdigit())
        if not files:
            found = sorted(p.name for p in path.iterdir())[:8]
            raise SourceError(
                f"Folder {path} holds no PhysioNet 2012 record files (<RecordID>.txt); it has {found}. "
                "Pass a set folder such as set-a/ or its archive set-a.tar.gz."
            )
        for i, p in enumerate(files):
            if progress and i % 1000 == 0:
                log.info("%s: reading record %d of %d", path.name, i + 1, len(files))
            with reading(p):
                raw = p.read_bytes()
            yield str(p), p.stem, raw
        return
    if not path.is_file():
        raise SourceError(
            f"{path} does not exist; pass a PhysioNet 2012 set folder (set-a/) or archive (set-a.tar.gz)."
        )
    try:
        archive = tarfile.open(path, "r:*")
    except tarfile.TarError as exc:
        raise SourceError(f"{path} is not a readable tar archive ({exc}); pass set-a/ or set-a.tar.gz.") from exc
    except READ_ERRORS as exc:
        raise read_error(path, exc) from exc
    n = 0
    with archive:
        try:
            for member in archive:
                _check_member_name(path, member.name)
                stem = Path(member.name).stem
                if not (member.isfile() and member.name.endswith(".txt") and stem.isdigit()):
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                if progress and n % 1000 == 0:
                    log.info("%s: reading record %d", path.name, n + 1)
                n += 1
                yield f"{path}:{member.name}", stem, handle.read()
        except (tarfile.TarError, EOFError) as exc:
            raise SourceError(f"{path} is truncated or corrupt ({exc}); download the archive again.") from exc
        except READ_ERRORS as exc:
            raise read_error(path, exc) from exc
    if n == 0:
        raise SourceError(f"Archive {path} holds no <RecordID>.txt record files; is it a PhysioNet 2012 set?")


def _check_member_name(path: Path, name: str) -> None:
    """A member named with an absolute path or ``..`` would land outside the archive's folder if extracted: such
    an archive was not made by PhysioNet and none of it is read."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise SourceError(f"Archive {path}: member {name!r} climbs out of the archive (an absolute path or '..'); "
                          "rejected. Re-create the archive with plain member names such as set-a/132539.txt.")


class RecordFiles:
    """All record files of a set concatenated (headers removed) into one CSV buffer, parsed in a single pass."""

    def __init__(self, files: Iterator[tuple[str, str, bytes]]):
        bodies, names, ids, n_lines = [], [], [], []
        seen: dict[str, str] = {}
        for name, stem, raw in files:
            if stem in seen:
                raise SourceError(f"Record {stem} appears twice: {seen[stem]} and {name}. Keep one of them.")
            seen[stem] = name
            text = raw.replace(b"\r\n", b"\n").rstrip(b"\n")
            if not text.strip():
                raise SourceError(f"Record file {name} is empty; expected a '{HEADER}' header and descriptor rows.")
            header, _, body = text.partition(b"\n")
            if header.strip().decode("utf-8", "replace") != HEADER:
                raise SourceError(
                    f"Record file {name}, line 1: expected the header {HEADER!r}, got "
                    f"{header[:60].decode('utf-8', 'replace')!r}."
                )
            if not body:
                raise SourceError(f"Record file {name} has a header but no rows; expected at least the descriptors.")
            bodies.append(body)
            names.append(name)
            ids.append(stem)
            n_lines.append(body.count(b"\n") + 1)
        self.names = names
        self.ids = np.array(ids, dtype=object)
        self._buffer = b"\n".join(bodies)
        self._n_lines = np.asarray(n_lines, dtype="int64")
        self._starts = np.concatenate([[0], np.cumsum(self._n_lines)])

    def where(self, row: int) -> str:
        """'file F, line L' of buffer row ``row`` (0-based)."""
        rec = int(np.searchsorted(self._starts, row, side="right") - 1)
        return f"record file {self.names[rec]}, line {row - self._starts[rec] + 2}"

    def parse(self) -> pd.DataFrame:
        """One row per data line: ``rec`` (file index), ``time``, ``param``, ``value`` (blank lines kept as NaN)."""
        try:
            df = pd.read_csv(
                io.BytesIO(self._buffer), header=None, names=["time", "param", "value"],
                dtype={"time": "category", "param": "category", "value": "category"},
                skip_blank_lines=False, keep_default_na=False, na_values=[""],
            )
        except UnicodeDecodeError as exc:
            line, byte = first_non_utf8([self._buffer]) or (1, 0)
            raise SourceError(f"{self.where(line - 1).capitalize()}: not UTF-8 text (byte 0x{byte:02x}); save "
                              "the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from exc
        except pd.errors.ParserError as exc:
            found = re.search(r"line (\d+), saw (\d+)", str(exc))
            if not found:
                raise SourceError(f"Record files could not be parsed as '{HEADER}' CSV: {exc}.") from exc
            raise SourceError(
                f"{self.where(int(found.group(1)) - 1).capitalize()}: expected 3 comma-separated fields "
                f"({HEADER}), got {found.group(2)}."
            ) from exc
        if len(df) != self._starts[-1]:  # cannot happen unless a quoted field spans lines
            raise SourceError(f"Record files have {self._starts[-1]} lines but {len(df)} rows; is a value quoted?")
        df.insert(0, "rec", np.repeat(np.arange(len(self.names), dtype="int64"), self._n_lines))
        df.index = np.arange(len(df))  # the buffer row, for error messages
        return df

    def hours(self, lines: pd.DataFrame) -> pd.Series:
        """``hh:mm`` -> hours, parsed once per distinct string; a bad one raises naming file and line."""
        times = lines["time"]
        cats = times.cat.categories
        parsed = np.full(len(cats), np.nan)
        for i, text in enumerate(cats):
            m = _TIME.match(str(text))
            if m and int(m.group(2)) < 60:
                parsed[i] = int(m.group(1)) + int(m.group(2)) / 60.0
        codes = times.cat.codes.to_numpy()
        out = np.where(codes >= 0, parsed[codes], np.nan)
        bad = np.isnan(out)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            got = "an empty time" if pd.isna(times.iloc[i]) else f"time {times.iloc[i]!r}"
            raise SourceError(
                f"{self.where(lines.index[i]).capitalize()}: cannot parse {got}; "
                "expected hh:mm since ICU admission, e.g. 07:35."
            )
        return pd.Series(out, index=lines.index)

    def values(self, lines: pd.DataFrame) -> pd.Series:
        """Values as floats (empty -> NaN); a non-numeric value raises naming file and line."""
        values = lines["value"]
        cats = values.cat.categories
        parsed = pd.to_numeric(pd.Series(np.asarray(cats, dtype=object)), errors="coerce").to_numpy(dtype=float)
        codes = values.cat.codes.to_numpy()
        out = np.where(codes >= 0, parsed[np.maximum(codes, 0)], np.nan)
        bad = (codes >= 0) & np.isnan(out)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SourceError(
                f"{self.where(lines.index[i]).capitalize()}: value {values.iloc[i]!r} of {lines['param'].iloc[i]} "
                "is not a number; fix or remove the line (use -1 or leave it empty for missing)."
            )
        return pd.Series(out, index=lines.index)
