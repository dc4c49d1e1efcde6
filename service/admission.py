"""Admission: what a request may hold while it is served, counted for the service as a whole.

* :class:`Generations`: at most ``concurrency`` generations run and ``queue`` more wait; past
  that a request gets 503 with a ``Retry-After`` estimated from the work queued (each holder's
  ``max_tokens`` at the measured seconds per token, plus the measured time to a first token),
  not from past hold times.
* :class:`UploadPool`: places for request bodies that bring a file (or more than
  ``SMALL_BODY`` bytes) and for remote fetches; a place lasts until the file is removed. A
  follow-up with no file never takes one. When every place is taken, the slowest holder whose
  average rate is below ``fair_bytes_s`` (and that has had one rate window to show it) gives its
  place to the newcomer and is ended with 408, so slow-but-legal senders never lock a fast one
  out; only a pool full of fast senders answers 503.
* :class:`MemoryBudget`: bytes of request bodies held in memory at once (JSON bodies, form
  fields), across all requests; past it, 503.

Each raises :class:`~service.errors.AtCapacity` (503) with a ``Retry-After`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

from .errors import AtCapacity, UploadTooSlow
from .metrics import METRICS

SMALL_BODY = 1024 * 1024  # a body up to this size without a file needs no upload place
MAX_RETRY_AFTER_S = 300


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(min(MAX_RETRY_AFTER_S, max(1, math.ceil(seconds))))}


class _Average:
    """An exponentially weighted average with a starting guess."""

    def __init__(self, guess: float):
        self.value, self.measured = guess, False

    def add(self, sample: float) -> None:
        self.value = sample if not self.measured else 0.8 * self.value + 0.2 * sample
        self.measured = True


# -- generations ----------------------------------------------------------------------------------


class Ticket:
    """One request's generation place, from admission until its last token."""

    def __init__(self, owner: Generations, max_tokens: int):
        self.owner, self.max_tokens = owner, max_tokens
        self.taken = time.monotonic()
        self.first_token: float | None = None
        self.done = False

    def expected_left(self, now: float) -> float:
        """Seconds of work this request still needs, as far as the service can tell."""
        total = self.owner.setup_s.value + self.max_tokens * self.owner.token_s.value
        return max(total - (now - self.taken), 0.0)

    def started(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()

    def release(self, tokens: int = 0) -> None:
        if self.done:
            return
        self.done = True
        self.owner.held.discard(self)
        if self.first_token is not None:
            self.owner.setup_s.add(self.first_token - self.taken)
            if tokens > 1:
                self.owner.token_s.add((time.monotonic() - self.first_token) / (tokens - 1))


class Generations:
    """At most ``concurrency`` generations at once; up to ``queue`` more requests wait."""

    def __init__(self, concurrency: int, queue: int):
        self.concurrency, self.limit = concurrency, concurrency + queue
        self.held: set[Ticket] = set()
        self.slots = asyncio.Semaphore(concurrency)
        self.waiting = 0  # requests waiting for a slot (a batch runs only while none does)
        self.setup_s = _Average(1.0)  # admission to first token: decode, encoders, queue, prefill
        self.token_s = _Average(0.05)  # seconds per generated token

    def backlog_s(self) -> float:
        """Seconds until the work already admitted is done, at ``concurrency`` at a time."""
        now = time.monotonic()
        return sum(t.expected_left(now) for t in self.held) / self.concurrency

    def take(self, max_tokens: int) -> Ticket:
        if len(self.held) >= self.limit:
            raise AtCapacity(
                "the service is at capacity (generations); retry shortly", headers=_retry_after(self.backlog_s())
            )
        ticket = Ticket(self, max_tokens)
        self.held.add(ticket)
        return ticket

    @contextlib.asynccontextmanager
    async def slot(self, wait=None):
        """A generation slot; ``wait`` wraps the wait for it (the caller's deadline, the stop)."""
        METRICS.queue_depth.inc()
        self.waiting += 1
        try:
            acquire = self.slots.acquire()
            await (acquire if wait is None else wait(acquire))
        finally:
            self.waiting -= 1
            METRICS.queue_depth.dec()
        METRICS.active.inc()
        try:
            yield
        finally:
            METRICS.active.dec()
            self.slots.release()


# -- upload places ----------------------------------------------------------------------------------


class Upload:
    """One upload place: a body being received (or a URL being fetched), then its file."""

    def __init__(self, pool: UploadPool, declared: int | None):
        self.pool, self.declared = pool, declared
        self.started = time.monotonic()
        self.received = 0
        self.receiving = True
        self.evicted = False
        self.done = False

    def rate(self, now: float) -> float:
        return self.received / max(now - self.started, 1e-3)

    def add(self, n: int) -> None:
        self.received += n
        self.check()

    def check(self) -> None:
        if self.evicted:
            raise UploadTooSlow(
                "the upload was ended to make room for a faster one: every upload place was taken and this one "
                f"arrived at {self.rate(time.monotonic()) / 1024:.0f} KiB/s; send it faster, or retry later"
            )

    def finished_receiving(self) -> None:
        self.receiving = False

    def release(self) -> None:
        if not self.done:
            self.done = True
            if self.pool.holders.pop(id(self), None) is not None:
                METRICS.uploads.dec()


class UploadPool:
    def __init__(self, places: int, fair_bytes_s: float, tenure_s: float):
        self.places, self.fair_bytes_s, self.tenure_s = places, fair_bytes_s, tenure_s
        self.holders: dict[int, Upload] = {}

    def take(self, declared: int | None = None) -> Upload:
        if len(self.holders) >= self.places:
            self._make_room()
        upload = Upload(self, declared)
        self.holders[id(upload)] = upload
        METRICS.uploads.inc()
        return upload

    def _make_room(self) -> None:
        now = time.monotonic()
        slow = [
            u
            for u in self.holders.values()
            if u.receiving and now - u.started >= self.tenure_s and u.rate(now) < self.fair_bytes_s
        ]
        if not slow:
            raise AtCapacity(
                "the service is at capacity (uploads); retry shortly", headers=_retry_after(self._soonest(now))
            )
        victim = min(slow, key=lambda u: u.rate(now))
        victim.evicted = True
        victim.release()  # its place is the newcomer's now; its reader ends it with a 408
        METRICS.uploads_evicted.inc()

    def _soonest(self, now: float) -> float:
        """Seconds until the first place is likely to free up."""
        waits = [
            (u.declared - u.received) / max(u.rate(now), 1.0) if u.declared and u.receiving else self.tenure_s
            for u in self.holders.values()
        ]
        return min(waits, default=1.0)


# -- body memory ----------------------------------------------------------------------------------


class MemoryBudget:
    """Bytes of request bodies held in memory, for all requests together."""

    def __init__(self, total: int):
        self.total, self.used = total, 0

    def reserve(self, n: int) -> None:
        if self.used + n > self.total:
            raise AtCapacity(
                f"the service is at capacity (request bodies in memory: {self.total / 2**20:.0f} MiB); retry shortly",
                headers=_retry_after(2),
            )
        self.used += n
        METRICS.body_memory.set(self.used)

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)
        METRICS.body_memory.set(self.used)


class BodyAccount:
    """What one request's body holds while it arrives: bytes in memory (within the memory
    budget) and, once it brings a file or more than ``SMALL_BODY`` bytes, an upload place.
    ``close()`` gives back the memory and (unless :meth:`keep_place` handed it to a file) the
    place."""

    def __init__(self, admission: Admission, declared: int | None):
        self.admission, self.declared = admission, declared
        self.memory = 0
        self.upload: Upload | None = None
        if declared is not None and declared > SMALL_BODY:
            self.take_place()  # refused before a byte is read

    def take_place(self) -> None:
        if self.upload is None:
            self.upload = self.admission.uploads.take(self.declared)

    def received(self, n: int, total: int) -> None:
        if total > SMALL_BODY:
            self.take_place()
        if self.upload is not None:
            self.upload.add(n)

    def check(self) -> None:
        if self.upload is not None:
            self.upload.check()

    def finished_receiving(self) -> None:
        if self.upload is not None:
            self.upload.finished_receiving()

    def hold(self, n: int) -> None:
        self.admission.memory.reserve(n)
        self.memory += n

    def free(self) -> None:
        """The body's bytes are not needed any more (parsed, or saved to a file)."""
        self.admission.memory.release(self.memory)
        self.memory = 0

    def keep_place(self) -> Upload | None:
        """Hands the place to the file the body became: it is given back when the file is removed."""
        upload, self.upload = self.upload, None
        return upload

    def close(self) -> None:
        self.free()
        if self.upload is not None:
            self.upload.release()
            self.upload = None


class Admission:
    """Everything a request may hold, for the service as a whole."""

    def __init__(self, settings):
        self.generations = Generations(settings.max_concurrency, settings.max_queue)
        self.uploads = UploadPool(settings.max_uploads, settings.upload_fair_bytes_s, settings.upload_rate_window_s)
        self.memory = MemoryBudget(settings.max_body_memory_bytes)
