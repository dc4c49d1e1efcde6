"""Durable state of OpenAI's Batch API: files and batches in SQLite (the standard library's),
file bytes under a data folder, one row per input line with its answer once it has one.

Each line's answer is committed in the same transaction that marks the line done, so a service
stopped or killed mid-batch resumes where it was and answers each line exactly once (a line cut
off mid-generation has no answer yet, and is answered after the restart). Files and batches
belong to the owner (the API key's digest) that created them; another owner's lookups find
nothing, exactly as if they did not exist.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL, status TEXT NOT NULL, metadata TEXT, created_at INTEGER NOT NULL,
    in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER,
    cancelling_at INTEGER, cancelled_at INTEGER, expires_at INTEGER, output_file_id TEXT, error_file_id TEXT,
    errors TEXT);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT, request TEXT NOT NULL,
    status TEXT NOT NULL, result TEXT, PRIMARY KEY (batch_id, line));
CREATE INDEX IF NOT EXISTS lines_todo ON lines (batch_id, status);
"""
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
STAMPS = {s: f"{s}_at" for s in ("in_progress", "finalizing", "completed", "failed", "cancelling", "cancelled")}
BATCH_FIELDS = (
    "id", "input_file_id", "endpoint", "completion_window", "status", "output_file_id", "error_file_id",
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "cancelling_at",
    "cancelled_at",
)  # fmt: skip


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Counts:
    total: int
    completed: int
    failed: int


class BatchStore:
    """SQLite plus a files folder under ``data_dir``; safe to use from several threads."""

    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir)
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "batches.sqlite", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- files ------------------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def add_file(self, owner: str, purpose: str, filename: str, size: int, file_id: str) -> dict:
        now = int(time.time())
        self._run(
            "INSERT INTO files (id, owner, purpose, filename, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (file_id, owner, purpose, filename, size, now),
        )
        return self.file(owner, file_id)

    def file(self, owner: str, file_id: str) -> dict | None:
        rows = self._run("SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner))
        if not rows:
            return None
        r = rows[0]
        return {
            "id": r["id"],
            "object": "file",
            "bytes": r["bytes"],
            "created_at": r["created_at"],
            "filename": r["filename"],
            "purpose": r["purpose"],
            "status": "processed",
            "status_details": None,
        }

    def files(self, owner: str, purpose: str | None = None) -> list[dict]:
        rows = self._run(
            "SELECT id FROM files WHERE owner = ? AND (? IS NULL OR purpose = ?) ORDER BY created_at DESC, id",
            (owner, purpose, purpose),
        )
        return [self.file(owner, r["id"]) for r in rows]

    def delete_file(self, owner: str, file_id: str) -> bool:
        if self.file(owner, file_id) is None:
            return False
        self._run("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner))
        self.file_path(file_id).unlink(missing_ok=True)
        return True

    # -- batches ------------------------------------------------------------------------------------

    def add_batch(
        self, owner: str, input_file_id: str, endpoint: str, window: str, metadata: dict | None, lines: list
    ) -> dict:
        """A batch and its lines (``(custom_id, request JSON)``, in order), created together."""
        batch_id, now = new_id("batch"), int(time.time())
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, status, metadata, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, 'validating', ?, ?, ?)",
                (batch_id, owner, input_file_id, endpoint, window, json.dumps(metadata or {}), now, now + 86400),
            )
            self._db.executemany(
                "INSERT INTO lines (batch_id, line, custom_id, request, status) VALUES (?, ?, ?, ?, 'pending')",
                [(batch_id, i, custom_id, request) for i, (custom_id, request) in enumerate(lines)],
            )
            self._db.execute("COMMIT")
        return self.batch(owner, batch_id)

    def counts(self, batch_id: str) -> Counts:
        rows = self._run("SELECT status, COUNT(*) AS n FROM lines WHERE batch_id = ? GROUP BY status", (batch_id,))
        by = {r["status"]: r["n"] for r in rows}
        return Counts(sum(by.values()), by.get("done", 0), by.get("failed", 0))

    def batch(self, owner: str, batch_id: str) -> dict | None:
        rows = self._run("SELECT * FROM batches WHERE id = ? AND owner = ?", (batch_id, owner))
        if not rows:
            return None
        r = rows[0]
        out = {name: r[name] for name in BATCH_FIELDS}
        counts = self.counts(batch_id)
        out.update(
            object="batch",
            errors=json.loads(r["errors"]) if r["errors"] else None,
            request_counts={"total": counts.total, "completed": counts.completed, "failed": counts.failed},
            metadata=json.loads(r["metadata"] or "{}") or None,
            expired_at=None,
        )
        return out

    def batches(self, owner: str, limit: int, after: str | None) -> list[dict]:
        rows = self._run(
            "SELECT id, created_at FROM batches WHERE owner = ? ORDER BY created_at DESC, id DESC", (owner,)
        )
        ids = [r["id"] for r in rows]
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        return [self.batch(owner, i) for i in ids[:limit]]

    def active(self, owner: str | None = None) -> list[tuple[str, str]]:
        """(owner, id) of the batches not yet finished, oldest first."""
        marks = ",".join("?" * len(ACTIVE))
        rows = self._run(
            f"SELECT owner, id FROM batches WHERE status IN ({marks}) AND (? IS NULL OR owner = ?) ORDER BY created_at",
            (*ACTIVE, owner, owner),
        )
        return [(r["owner"], r["id"]) for r in rows]

    def status(self, batch_id: str) -> str:
        return self._run("SELECT status FROM batches WHERE id = ?", (batch_id,))[0]["status"]

    def set_status(self, batch_id: str, status: str, **fields) -> None:
        stamp = STAMPS.get(status)
        values = {"status": status, **fields}
        if stamp:
            values[stamp] = int(time.time())
        assignments = ", ".join(f"{k} = ?" for k in values)
        self._run(f"UPDATE batches SET {assignments} WHERE id = ?", (*values.values(), batch_id))

    def cancel(self, owner: str, batch_id: str) -> dict | None:
        batch = self.batch(owner, batch_id)
        if batch is not None and batch["status"] in ("validating", "in_progress"):
            self.set_status(batch_id, "cancelling")
        return self.batch(owner, batch_id)

    # -- lines --------------------------------------------------------------------------------------

    def pending(self, batch_id: str, limit: int) -> list[sqlite3.Row]:
        return self._run(
            "SELECT line, custom_id, request FROM lines WHERE batch_id = ? AND status = 'pending' "
            "ORDER BY line LIMIT ?",
            (batch_id, limit),
        )

    def answer(self, batch_id: str, line: int, ok: bool, result: dict) -> None:
        """Records a line's answer once: a line already answered keeps its first answer."""
        self._run(
            "UPDATE lines SET status = ?, result = ? WHERE batch_id = ? AND line = ? AND status = 'pending'",
            ("done" if ok else "failed", json.dumps(result), batch_id, line),
        )

    def results(self, batch_id: str) -> list[sqlite3.Row]:
        return self._run("SELECT line, status, result FROM lines WHERE batch_id = ? ORDER BY line", (batch_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
