"""Failing to read a raw file, in one place: every reader opens and parses its raw files inside
:func:`reading`, so a truncated or corrupt compressed file, a file it may not read and bytes that are not UTF-8
text all end in one :class:`~healthfusion.data.errors.SourceError` naming the file (and the line where it can be
found), whichever reader meets them."""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from healthfusion.data.errors import SourceError

_SCAN_BYTES = 1 << 20  # bytes decoded at a time when looking for the line of a non-UTF-8 byte

READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)  # what reading a raw file can raise


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Run the code that opens or parses raw file ``path``; any failure to read it becomes one
    :class:`SourceError` naming the file (and the line, for bytes that are not UTF-8 text).

    Every reader reads its raw files inside this context, so a truncated or corrupt compressed file
    (``EOFError``, ``zlib.error``, ``gzip.BadGzipFile``), a file it may not read (``PermissionError``), any other
    ``OSError`` and non-UTF-8 bytes (``UnicodeDecodeError``) all end in the same kind of message.
    :class:`SourceError` raised inside passes unchanged.

    Example::

        with reading(path):
            df = pd.read_csv(path, dtype=str)
    """
    path = Path(path)
    try:
        yield
    except READ_ERRORS as exc:
        raise read_error(path, exc) from exc


def read_error(path: Path, exc: BaseException) -> SourceError:
    """The one-line :class:`SourceError` for failing to read ``path`` with ``exc`` (one of :data:`READ_ERRORS`)."""
    if isinstance(exc, UnicodeDecodeError):
        return not_utf8(path)
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)) or "runcated" in str(exc):
        return SourceError(f"File {path} is truncated or corrupt ({exc or type(exc).__name__}); copy or "
                           "download it again.")
    if isinstance(exc, PermissionError):
        return SourceError(f"File {path} cannot be read: permission denied; give the user running healthfusion "
                           "read access to it (e.g. chmod a+r), or copy it somewhere readable.")
    return SourceError(f"File {path} could not be read ({exc}); is it a complete, uncorrupted file?")


def not_utf8(path: Path, data: bytes | None = None, line_offset: int = 0) -> SourceError:
    """The error for a file (or, with ``data``, a part of one starting after line ``line_offset``) that holds
    bytes that are not UTF-8 text, naming the first such line when it can be found."""
    path = Path(path)
    found = first_non_utf8([data]) if data is not None else _scan_file(path)
    where = f"File {path}" if found is None else f"File {path}, line {found[0] + line_offset}"
    byte = "" if found is None else f" (byte 0x{found[1]:02x})"
    return SourceError(f"{where}: not UTF-8 text{byte}; save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 "
                       "FILE > FILE.utf8) and read that copy.")


def is_utf8_error(exc: Exception) -> bool:
    """Whether a pyarrow CSV error is about text that is not valid UTF-8."""
    return "UTF8" in str(exc) or "UTF-8" in str(exc)


def _scan_file(path: Path) -> tuple[int, int] | None:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            return first_non_utf8(iter(lambda: fh.read(_SCAN_BYTES), b""))
    except (OSError, EOFError, zlib.error):
        return None


def first_non_utf8(chunks: Iterable[bytes]) -> tuple[int, int] | None:
    """(1-based line, byte value) of the first byte of ``chunks`` (one byte stream) that is not UTF-8, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    for chunk in chunks:
        pending = decoder.getstate()[0] + chunk  # bytes of a character split across chunks come first
        try:
            lines += decoder.decode(chunk).count("\n")
        except UnicodeDecodeError as exc:
            return lines + pending[: exc.start].count(b"\n") + 1, pending[exc.start]
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return lines + 1, exc.object[exc.start]
    return None
