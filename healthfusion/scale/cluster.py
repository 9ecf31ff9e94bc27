"""``--cluster`` values: where a command's work runs.

=================  ==================================================================================
``local``          start a Ray cluster on this machine with one worker per CPU; shut it down at the end
``local:N``        the same with N workers (N >= 1)
``auto``           join the Ray cluster already running on this machine (``ray start --head``)
``ADDRESS``        join the cluster at ``ADDRESS``: ``HOST:PORT`` of its head, or ``ray://HOST:PORT``
=================  ==================================================================================

Example::

    parse_cluster("local:2")   # ClusterSpec(kind="local", workers=2, address=None)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

HELP = ("Run on Ray (extra scale): local[:N] starts a local cluster of N workers (default: one per CPU) and stops "
        "it at the end; auto joins the cluster running on this machine; HOST:PORT or ray://HOST:PORT joins that "
        "cluster. Default: one process, no Ray.")


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value: ``kind`` is ``"local"``, ``"auto"`` or ``"address"``; ``workers`` the
    local cluster's size (None: one per CPU, or whatever a joined cluster has); ``address`` for ``"address"``."""

    kind: str
    workers: int | None = None
    address: str | None = None

    def __str__(self) -> str:
        if self.kind == "local":
            return "local" + (f":{self.workers}" if self.workers else "")
        return self.address if self.kind == "address" else self.kind


_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-]+:\d{1,5}$")


def parse_cluster(text: str) -> ClusterSpec:
    """Parse a ``--cluster`` value (see the module docstring).

    Raises
    ------
    ValueError
        Naming the value and the accepted forms, for anything else (e.g. ``local:0``, ``local:two``).
    """
    value = str(text).strip()
    if value == "local":
        return ClusterSpec("local", workers=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                           else os.cpu_count() or 1)
    if value.startswith("local:"):
        n = value.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--cluster {value!r}: the number of local workers must be a whole number >= 1, "
                             "e.g. --cluster local:2.")
        return ClusterSpec("local", workers=int(n))
    if value == "auto":
        return ClusterSpec("auto")
    if _ADDRESS.match(value):
        return ClusterSpec("address", address=value)
    raise ValueError(f"--cluster {value!r} is not a cluster: use local, local:N, auto, HOST:PORT or "
                     "ray://HOST:PORT.")
