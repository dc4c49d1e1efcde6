"""The shared feature tier (L2): each video's projected embeddings in Redis, so that any replica
can answer a follow-up about a video another one decoded. The in-process LRU stays in front
(L1); the lookup order is L1, then Redis, then 404.

What is stored, and why: the projected embeddings (what L1 keeps and the prompt is built
from), so a hit costs no model work at all. At ``demo`` that is about 0.23 MB a video; at the
paper's size 4.6 MB in bfloat16 (893 x 2560 x 2), against 2.0 MB of encoder outputs (829 x 1152
+ 64 x 768): projecting them again would save Redis memory at a projector pass per hit.

* Keys are ``avchat:1:<fingerprint>:video:<video_id>`` and ``...:alias:<owner>:<uuid digest>``:
  the fingerprint names the checkpoint (its config, projector weights and dtype), so a replica
  serving another checkpoint never reads them; ``video_id`` is already the owner-scoped HMAC.
* Values are safetensors (a JSON header of dtype and shape, raw bytes; never pickle) with the
  owner, video id, fingerprint and media report in its metadata. Every field is checked on
  read; a value that fails is a miss, logged once.
* Redis is an accelerator, never a dependency: every call is bounded by ``timeout_s``; after a
  failure the tier stands aside for a moment (then tries again by itself), requests carry on with
  L1 alone, and ``/ready`` says ``degraded``. Writes happen in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import struct
import time
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from model.pipeline import MediaEmbeddings, MediaReport

from .metrics import METRICS

log = logging.getLogger("avchat.store")
FORMAT = "avchat-features/1"
VIDEO_ID = re.compile(r"vid-[0-9a-f]{40}")
MAX_HEADER = 64 * 1024


def fingerprint(model, dtype: str) -> str:
    """What the stored values depend on: the checkpoint's config, its projector weights, the dtype."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.projector_state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(dtype.encode())
    return h.hexdigest()[:24]


@dataclass
class CachedMedia:
    """One video's features, whichever tier holds them."""

    owner: str
    video_id: str
    embeddings: MediaEmbeddings
    report: MediaReport

    @property
    def nbytes(self) -> int:
        return self.embeddings.nbytes


def encode_value(item, fp: str) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in vars(item.embeddings).items() if v is not None}
    metadata = {
        "format": FORMAT,
        "owner": item.owner,
        "video_id": item.video_id,
        "fingerprint": fp,
        "report": json.dumps(item.report.as_dict()),
    }
    return save_tensors(tensors, metadata=metadata)


class BadValue(ValueError):
    """A stored value that is not one this service wrote for this checkpoint."""


def decode_value(data: bytes, fp: str, video_id: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype):
    """The value's owner and media, every field checked; raises :class:`BadValue`."""
    if len(data) < 8:
        raise BadValue("too short")
    (size,) = struct.unpack("<Q", data[:8])
    if not 2 <= size <= min(MAX_HEADER, len(data) - 8):
        raise BadValue("no safetensors header")
    try:
        header = json.loads(data[8 : 8 + size])
        meta = header.get("__metadata__") or {}
        report = MediaReport(**json.loads(meta.get("report", "{}")))
        tensors = load_tensors(data)
    except Exception as exc:  # safetensors' own errors among them: whatever it is, it is not ours
        raise BadValue(f"unreadable ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT or meta.get("fingerprint") != fp or meta.get("video_id") != video_id:
        raise BadValue("written for another checkpoint, format or key")
    if not tensors or set(tensors) - set(shapes):
        raise BadValue(f"unexpected tensors {sorted(tensors)}")
    for name, tensor in tensors.items():
        if not _fits(tuple(tensor.shape), shapes[name]) or tensor.dtype != dtype:
            raise BadValue(f"{name} is {tuple(tensor.shape)} {tensor.dtype}, not {shapes[name]} {dtype}")
    embeddings = MediaEmbeddings(video=tensors.get("video"), audio=tensors.get("audio"))
    return meta.get("owner", ""), embeddings, report


def _fits(shape: tuple[int, ...], expected: tuple) -> bool:
    """``expected`` is (rows, width), or (rows per window, width, most windows) for the audio."""
    if len(expected) == 3:
        per, width, most = expected
        return len(shape) == 2 and shape[1] == width and shape[0] % per == 0 and 1 <= shape[0] // per <= most
    return shape == expected


class FeatureStore:
    """L2 in Redis (``redis://host:port/db``)."""

    def __init__(self, url: str, fp: str, ttl_s: float, timeout_s: float, shapes: dict, dtype: torch.dtype, device):
        import redis.asyncio as aioredis

        self.url, self.fp, self.ttl, self.timeout = url, fp, int(ttl_s), timeout_s
        self.shapes, self.dtype, self.device = shapes, dtype, device
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self.down_until = 0.0  # while in the future: Redis failed lately, stand aside
        self.backoff = 0.5
        self.healthy = True
        self._warned: set[str] = set()
        self._writes: set[asyncio.Task] = set()

    # -- the bound on every call ----------------------------------------------------------------

    async def _call(self, what: str, coro):
        """Runs one Redis command within the timeout; None on any failure (counted, never raised)."""
        if time.monotonic() < self.down_until:
            coro.close()
            METRICS.store.labels("skipped").inc()
            return None
        try:
            result = await asyncio.wait_for(coro, self.timeout)
        except Exception as exc:  # down, slow, full, refused: L1 carries on alone
            self._failed(what, exc)
            return None
        self._recovered()
        return result

    def _failed(self, what: str, exc: Exception) -> None:
        METRICS.store.labels("error").inc()
        if self.healthy:
            log.warning("feature store unavailable", extra={"fields": {"op": what, "error": repr(exc)[:200]}})
        self.healthy = False
        METRICS.store_healthy.set(0)
        self.down_until = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, 10.0)

    def _recovered(self) -> None:
        if not self.healthy:
            log.info("feature store back", extra={"fields": {"url": self.safe_url()}})
        self.healthy, self.backoff = True, 0.5
        METRICS.store_healthy.set(1)

    def safe_url(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.url)

    @property
    def status(self) -> str:
        return "ok" if self.healthy else "degraded"

    async def watch(self, every_s: float = 2.0) -> None:
        """Pings Redis now and then, so /ready tells the truth with no traffic and the tier resumes."""
        while True:
            await asyncio.sleep(every_s)
            self.down_until = 0.0
            await self._call("ping", self.redis.ping())

    # -- keys -------------------------------------------------------------------------------------

    def _video_key(self, video_id: str) -> str:
        return f"avchat:1:{self.fp}:video:{video_id}"

    def _alias_key(self, owner: str, name: str) -> str:
        return f"avchat:1:{self.fp}:alias:{owner}:{hashlib.sha256(name.encode()).hexdigest()[:32]}"

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, owner: str, video_id: str) -> CachedMedia | None:
        if not VIDEO_ID.fullmatch(video_id):
            return None
        data = await self._call("get", self.redis.get(self._video_key(video_id)))
        if data is None:
            METRICS.store.labels("miss").inc()
            return None
        try:
            stored_owner, embeddings, report = await asyncio.to_thread(
                decode_value, data, self.fp, video_id, self.shapes, self.dtype
            )
        except BadValue as exc:
            METRICS.store.labels("refused").inc()
            if video_id not in self._warned and len(self._warned) < 10_000:
                self._warned.add(video_id)
                log.warning("refused a stored value", extra={"fields": {"video_id": video_id, "why": str(exc)}})
            return None
        if not hmac.compare_digest(stored_owner, owner):  # another key's video: absent, as in L1
            METRICS.store.labels("miss").inc()
            return None
        METRICS.store.labels("hit").inc()
        moved = MediaEmbeddings(
            *(t.to(self.device) if t is not None else None for t in (embeddings.video, embeddings.audio))
        )
        return CachedMedia(owner, video_id, moved, report)

    async def resolve(self, owner: str, name: str) -> str | None:
        """The video_id an owner's uuid names, if a replica registered it."""
        value = await self._call("get", self.redis.get(self._alias_key(owner, name)))
        text = value.decode("ascii", "replace") if value else ""
        return text if VIDEO_ID.fullmatch(text) else None

    # -- writing (in the background: a request never waits for it) --------------------------------

    def put(self, item) -> None:
        self._spawn(self._put(item))

    def alias(self, owner: str, name: str, video_id: str) -> None:
        self._spawn(self._call("set", self.redis.set(self._alias_key(owner, name), video_id, ex=self.ttl)))

    async def _put(self, item) -> None:
        data = await asyncio.to_thread(encode_value, item, self.fp)
        if await self._call("set", self.redis.set(self._video_key(item.video_id), data, ex=self.ttl)):
            METRICS.store.labels("write").inc()

    def _spawn(self, coro) -> None:
        if time.monotonic() < self.down_until:
            coro.close()
            METRICS.store.labels("skipped").inc()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def close(self) -> None:
        for task in list(self._writes):
            task.cancel()
        try:
            await asyncio.wait_for(self.redis.aclose(), self.timeout)
        except Exception:
            pass
