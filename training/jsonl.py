"""JSON lines: the one reader and writer for manifests, skip lists, predictions and judge caches.

A file whose last line was cut off (a run killed mid-write) reads without that line, and the
next append first removes it, so a rerun resumes (and remakes that row) instead of crashing on,
or gluing onto, the torn line.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

_LOCK = threading.Lock()


def read(path: str | os.PathLike) -> Iterator[dict]:
    """The rows of a JSON-lines file; a torn last line is skipped, a bad line elsewhere is an
    error that names the file and line."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):  # the last line, without its newline: written by a killed run
                return
            raise ValueError(f"{path}:{n}: not JSON ({exc})") from None


def append(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Appends rows (safe across threads of one process; each row is one write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(path, "a+b") as f:
        _drop_torn_tail(f)
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())


def write(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Writes a whole file (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _drop_torn_tail(f) -> None:
    size = f.seek(0, os.SEEK_END)
    if not size:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    start = max(0, size - (1 << 20))
    while True:  # find the last newline, reading backwards a megabyte at a time
        f.seek(start)
        cut = f.read(size - start).rfind(b"\n")
        if cut >= 0:
            f.truncate(start + cut + 1)
            break
        if start == 0:
            f.truncate(0)
            break
        start = max(0, start - (1 << 20))
    f.seek(0, os.SEEK_END)
