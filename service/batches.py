"""OpenAI's Batch API on this service: upload a JSON-lines file of ``/v1/chat/completions``
requests, create a batch, and its answers come back as an output file (and the failures as an
error file), lines in input order, each with its ``custom_id``.

A batch runs on the same engine as interactive requests, behind them: it takes one generation
place at a time (``AVCHAT_BATCH_CONCURRENCY``), and only while no interactive request waits for
one. Its state is in SQLite (``batch_store.py``): restarted, the service resumes each batch and
answers each line exactly once. Lines are run exactly as the chat route runs a request (media as
``data:`` URLs, ``file://`` under ``AVCHAT_ALLOWED_LOCAL_MEDIA_PATH`` or allowed ``http(s)``); a
line that is not a valid request becomes an entry of the error file, and the others are answered.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import shutil

from . import paths
from .batch_store import BatchStore, new_id
from .errors import BadParameter, NotFound, TooManyBatches, UploadTooLarge, describe
from .intake import with_media
from .protocol import parse_completion_request
from .responses import ChatCompletion

log = logging.getLogger("avchat.batch")
ENDPOINT = paths.CHAT_COMPLETIONS
WINDOWS = ("24h",)


class Interrupted(Exception):
    """The service is stopping (or its engine died): the line stays pending, for the next start."""


class LineError(Exception):
    """A line that is not a request this endpoint takes (it goes to the error file)."""


def parse_line(text: str, line: int, seen: set[str]) -> tuple[str, dict]:
    """A batch line's ``custom_id`` and request body; raises :class:`LineError`."""
    try:
        item = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise LineError(f"line {line + 1} is not JSON") from None
    if not isinstance(item, dict):
        raise LineError(f"line {line + 1} is not a JSON object")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
        raise LineError(f"line {line + 1} needs a custom_id (a string of up to 512 characters)")
    if custom_id in seen:
        raise LineError(f"line {line + 1} repeats the custom_id {custom_id!r}")
    if item.get("method", "POST") != "POST" or item.get("url") != ENDPOINT:
        raise LineError(f"line {line + 1}: each line is a POST to {ENDPOINT}")
    if not isinstance(item.get("body"), dict):
        raise LineError(f"line {line + 1} needs a body (the request, a JSON object)")
    return custom_id, item["body"]


class Batches:
    """The Batch API's operations (owner-scoped; errors raised as domain errors) and its runner."""

    def __init__(self, store: BatchStore, chat, settings):
        self.store, self.chat, self.settings = store, chat, settings
        self._wake = asyncio.Event()
        self.paused = False  # a stop began: no new line starts

    def pause(self) -> None:
        self.paused = True
        self._wake.set()

    # -- files --------------------------------------------------------------------------------------

    def add_file(self, owner: str, purpose: str, filename: str, temp) -> dict:
        """Keeps an uploaded file (a :class:`~service.uploads.TempVideo`) under the data folder."""
        if purpose != "batch":
            raise BadParameter("purpose takes batch (this service has no other use for files)", param="purpose")
        file_id = new_id("file")
        shutil.move(temp.path, self.store.file_path(file_id))
        return self.store.add_file(owner, purpose, filename[:256] or "input.jsonl", temp.size, file_id)

    def file(self, owner: str, file_id: str) -> dict:
        found = self.store.file(owner, file_id)
        if found is None:
            raise NotFound(f"no file {file_id!r}", param="file_id", code="file_not_found")
        return found

    # -- batches ------------------------------------------------------------------------------------

    def create(self, owner: str, input_file_id: str, endpoint: str, window: str, metadata: dict | None) -> dict:
        s = self.settings
        if endpoint != ENDPOINT:
            raise BadParameter(f"endpoint takes {ENDPOINT}", param="endpoint")
        if window not in WINDOWS:
            raise BadParameter("completion_window takes 24h", param="completion_window")
        self.file(owner, input_file_id)
        if len(self.store.active(owner)) >= s.batch_max_active:
            raise TooManyBatches(
                f"this key has {s.batch_max_active} batches in flight (AVCHAT_BATCH_MAX_ACTIVE); "
                "wait for one to finish",
                headers={"Retry-After": "60"},
            )
        lines = []
        with open(self.store.file_path(input_file_id), encoding="utf-8", errors="replace") as f:
            for text in f:
                if text.strip():
                    lines.append((None, text.rstrip("\n")))
                if len(lines) > s.batch_max_lines:
                    raise UploadTooLarge(
                        f"the input file has more than {s.batch_max_lines} lines (AVCHAT_BATCH_MAX_LINES)",
                        param="input_file_id",
                    )
        if not lines:
            raise BadParameter("the input file has no lines", param="input_file_id")
        batch = self.store.add_batch(owner, input_file_id, endpoint, window, metadata, lines)
        self._wake.set()
        return batch

    def get(self, owner: str, batch_id: str) -> dict:
        found = self.store.batch(owner, batch_id)
        if found is None:
            raise NotFound(f"no batch {batch_id!r}", param="batch_id", code="batch_not_found")
        return found

    def cancel(self, owner: str, batch_id: str) -> dict:
        self.get(owner, batch_id)
        self._wake.set()
        return self.store.cancel(owner, batch_id)

    # -- the runner ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs every unfinished batch, oldest first, forever (resuming those a stop interrupted).
        One process per data folder runs them (a lock file decides); the others only take requests."""
        lock = open(self.store.root / "runner.lock", "w")  # noqa: SIM115 - held for the process's life
        try:
            await _locked(lock)
            while not self.paused:
                await self._next()
        finally:
            lock.close()

    async def _next(self) -> None:
        active = self.store.active()
        if not active:
            self._wake.clear()
            await self._wake.wait()
            return
        owner, batch_id = active[0]
        try:
            await self._run_batch(owner, batch_id)
        except Interrupted:
            self.paused = True  # what is left is pending: the next start goes on with it
        except Exception:  # a bug, not a line: the batch fails, the service carries on
            log.exception("batch failed", extra={"fields": {"batch": batch_id}})
            self.store.set_status(batch_id, "failed", errors=json.dumps({"data": [{"message": "internal error"}]}))

    async def _run_batch(self, owner: str, batch_id: str) -> None:
        store = self.store
        if store.status(batch_id) == "validating":
            store.set_status(batch_id, "in_progress")
        seen = {json.loads(r["result"])["custom_id"] for r in store.results(batch_id) if r["result"]}
        concurrency = max(1, self.settings.batch_concurrency)
        while store.status(batch_id) == "in_progress":
            if self.paused:
                raise Interrupted()
            todo = store.pending(batch_id, concurrency)
            if not todo:
                break
            await self._behind_interactive()
            await asyncio.gather(*(self._answer(owner, batch_id, row, seen) for row in todo))
        await asyncio.to_thread(self._finish, owner, batch_id)

    async def _behind_interactive(self) -> None:
        """Waits while interactive requests wait for a generation place or hold them all."""
        gens = self.chat.admission.generations
        while gens.waiting or len(gens.held) >= gens.concurrency:
            await asyncio.sleep(0.05)

    async def _answer(self, owner: str, batch_id: str, row, seen: set[str]) -> None:
        line, text = row["line"], row["request"]
        request_id = new_id("batch_req")
        try:
            custom_id, body = parse_line(text, line, seen)
        except LineError as exc:
            custom_id = custom_id_of(text)
            error = {"code": "invalid_request", "message": str(exc), "line": line + 1}
            self.store.answer(
                batch_id, line, False, {"id": request_id, "custom_id": custom_id, "response": None, "error": error}
            )
            return
        seen.add(custom_id)
        status, payload = await run_request(self.chat, self.settings, owner, {**body, "stream": False})
        result = {
            "id": request_id,
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": payload},
            "error": None,
        }
        self.store.answer(batch_id, line, status == 200, result)

    def _finish(self, owner: str, batch_id: str) -> None:
        """Writes the output and error files (input order) and closes the batch."""
        store = self.store
        cancelled = store.status(batch_id) == "cancelling"
        if not cancelled:
            store.set_status(batch_id, "finalizing")
        rows = store.results(batch_id)
        outputs = {"done": [], "failed": []}
        for r in rows:
            if r["result"]:
                outputs[r["status"]].append(r["result"])
        ids = {}
        for kind, results in outputs.items():
            if not results:
                continue
            file_id = new_id("file")
            path = store.file_path(file_id)
            path.write_text("".join(line + "\n" for line in results), encoding="utf-8")
            store.add_file(
                owner,
                "batch_output",
                f"{batch_id}_{'output' if kind == 'done' else 'error'}.jsonl",
                path.stat().st_size,
                file_id,
            )
            ids["output_file_id" if kind == "done" else "error_file_id"] = file_id
        store.set_status(batch_id, "cancelled" if cancelled else "completed", **ids)
        log.info("batch done", extra={"fields": {"batch": batch_id, "lines": len(rows), "cancelled": cancelled}})


async def run_request(chat, settings, owner: str, body: dict) -> tuple[int, dict]:
    """One /v1/chat/completions request, run as the route runs it: (status, body). At capacity it
    waits its turn (a batch line is never refused for load); a stop raises :class:`Interrupted`."""
    while True:
        intake = None
        try:
            request = await asyncio.to_thread(parse_completion_request, body)
            intake = await with_media(request, settings)
            result = await chat.create(intake, owner)
            assert isinstance(result, ChatCompletion)
            return 200, result.model_dump()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status, payload, _ = describe(exc)
            if payload["error"]["code"] in ("shutting_down", "engine_stopped"):
                raise Interrupted() from None
            if status != 503:
                return status, payload
            await asyncio.sleep(0.5)
        finally:
            if intake is not None:
                intake.discard()


async def _locked(lock) -> None:
    """Waits until this process holds the data folder's runner lock."""
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            await asyncio.sleep(2.0)


def custom_id_of(text: str) -> str | None:
    """A line's custom_id, if it is JSON that has one (for lines that are not valid requests)."""
    try:
        value = json.loads(text).get("custom_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None
