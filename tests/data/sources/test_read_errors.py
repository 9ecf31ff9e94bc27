"""Reading raw files that cannot be read: truncated or corrupt compressed data, no permission, non-UTF-8 bytes."""

import gzip
from pathlib import Path

import pyarrow as pa
import pytest

from healthfusion.data.errors import SourceError
from healthfusion.data.sources import io, read_errors
from healthfusion.data.sources.io import stream_table


def _blocks(path, columns):
    return pa.concat_tables([t for t in stream_table(path, columns)]).to_pandas()


def _truncated_gz(path: Path, text: str) -> Path:
    full = gzip.compress(text.encode())
    path.write_bytes(full[: len(full) // 2])
    return path


ROWS = "stay_id,charttime\n" + "".join(f"{i},2150-01-01 06:00:00\n" for i in range(2000))


def test_read_table_names_a_truncated_gzip(tmp_path):
    path = _truncated_gz(tmp_path / "t.csv.gz", ROWS)
    with pytest.raises(SourceError, match=r"t\.csv\.gz is truncated or corrupt"):
        io.read_table(path)
    with pytest.raises(SourceError, match=r"t\.csv\.gz is truncated or corrupt"):
        _blocks(path, {"stay_id": "int", "charttime": "time"})


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_non_utf8_bytes_name_file_and_line(tmp_path, suffix):
    raw = b"stay_id,note\n1,ok\n2,caf\xe9 au lait\n3,ok\n"
    path = tmp_path / f"t{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    for read in (lambda: io.read_table(path), lambda: _blocks(path, {"stay_id": "int", "note": "str"})):
        with pytest.raises(SourceError, match=rf"t{suffix.replace('.', '[.]')}, line 3: not UTF-8 text \(byte 0xe9\)"):
            read()


def test_first_non_utf8_finds_the_line_across_chunks():
    data = ("a\n" * 5 + "é\n").encode() + b"x\xff\n"
    # a two-byte character split between chunks is not an error; the bad byte is on line 7
    chunks = [data[: data.index("é".encode()) + 1], data[data.index("é".encode()) + 1:]]
    assert read_errors.first_non_utf8(chunks) == (7, 0xFF)
    assert read_errors.first_non_utf8([data[:-3]]) is None
    assert read_errors.first_non_utf8([b"ok\n\xc3"]) == (2, 0xC3)  # a character cut off at the end


@pytest.mark.parametrize("exc, message", [
    (PermissionError(13, "Permission denied"), r"t\.csv cannot be read: permission denied"),
    (EOFError("Compressed file ended"), r"t\.csv is truncated or corrupt"),
    (IsADirectoryError(21, "Is a directory"), r"t\.csv could not be read"),
])
def test_reading_turns_read_failures_into_one_source_error(tmp_path, exc, message):
    with pytest.raises(SourceError, match=message):
        with read_errors.reading(tmp_path / "t.csv"):
            raise exc
