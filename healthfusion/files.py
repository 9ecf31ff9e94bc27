"""Writing output files safely: atomically (a temporary name in the same folder, then a rename) and with the
user's umask; and :func:`display_path`, how logs and console output name a file of the user's machine. Imports
nothing from healthfusion, so every layer may use it.

An interrupted run never leaves a half-written file under its final name, and a reader never sees one.

Example::

    write_text(run_dir / "metrics.json", json.dumps(summary))
    write_csv(table, run_dir / "comparison.csv", index=False)
    with atomic_path(run_dir / "roc.png") as tmp:
        fig.savefig(tmp, format="png")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a newly created file gets under the user's umask (``0o666 & ~umask``); some writers
    (safetensors, :func:`tempfile.mkstemp`) create files readable by their owner only."""
    os.chmod(path, 0o666 & ~_umask())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (parent folders created); when the block ends without an error the
    temporary file is renamed to ``path`` with the user's umask, else it is removed and ``path`` is left as it
    was. The temporary name keeps the suffix, so writers that go by it (matplotlib, pandas) still work."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp{os.getpid()}{final.suffix}")
    try:
        yield tmp
        apply_umask(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(frame: Any, path: str | os.PathLike, **to_csv: Any) -> Path:
    """Write a DataFrame with ``frame.to_csv(..., **to_csv)`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **to_csv)
    return Path(path)


def display_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``path`` as logs and console output show it, without the absolute paths of the user's machine: relative to
    ``base`` (a run folder, a config's folder) or else to the working directory when it lies inside one of them,
    else ``.../NAME`` (its last component). A relative path is shown as given.

    Example
    -------
    >>> display_path("/home/ana/runs/demo/model/config.json", base="/home/ana/runs/demo")
    'model/config.json'
    >>> display_path("/srv/data/physionet/set-a.tar.gz")
    '.../set-a.tar.gz'
    >>> display_path("runs/demo")
    'runs/demo'
    """
    p = Path(path).expanduser()
    if not p.is_absolute():
        return str(p)
    resolved = p.resolve()
    for root in ([Path(base)] if base is not None else []) + [Path.cwd()]:
        root = root.expanduser().resolve()
        if resolved == root:
            return "." if root == Path.cwd().resolve() else root.name
        if root in resolved.parents:
            return resolved.relative_to(root).as_posix()
    return f".../{p.name}"

