"""How the service runs the media pipeline (``model.pipeline``) for many requests at once.

* decode: ffmpeg runs in asyncio subprocesses, at most ``max_parallel_decodes`` files at once,
  each under the media budgets; a subprocess is killed when its request is cancelled (client
  gone) or runs past the ffmpeg timeout. Probe output is parsed in a worker thread as it
  streams, so a file with a million packets never stalls the event loop.
* encode + project: SigLIP and Whisper run in one encoder thread; requests that arrive within
  a short window are encoded together (up to ``encoder_max_batch`` files per batch).
* the cache: projected embeddings per video, in this process (``feature_cache.py``) and, when
  configured, in Redis for every replica (``feature_store.py``), so a follow-up question skips
  decoding and encoding. A video belongs to the key that uploaded it: its ``video_id`` is an
  HMAC of the key, the content, the checkpoint and the analysed window under a server secret,
  outsiders cannot compute it, another key's lookup is a plain miss, and nothing is shared across
  keys (not even timing).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from model import pipeline
from model.ffmpeg import FfmpegJob, OutputCollector, cap_memory, timeout_error
from model.media import Window
from model.pipeline import Media, MediaEmbeddings, MediaTensors

from .errors import BadParameter
from .feature_cache import CachedMedia, FeatureCache, FeatureTiers
from .feature_store import fingerprint
from .metrics import METRICS

log = logging.getLogger("avchat.media")


NICE = shutil.which("nice")


async def run_job(job: FfmpegJob, path: str, low_priority: bool = False):
    """Runs an ffmpeg job as an asyncio subprocess; kills it on timeout or cancellation.
    ``low_priority`` runs it at the lowest CPU priority (nice 19), for the heavy lane."""
    args = [NICE, "-n", "19", *job.args] if low_priority and NICE else job.args
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    cap_memory(proc.pid, job.limits)
    out = OutputCollector(job)

    async def pump(stream, sink, in_thread: bool) -> None:
        while data := await stream.read(1 << 20):
            if in_thread:
                await asyncio.to_thread(sink, data)
            else:
                sink(data)

    # Plain tasks and asyncio.wait rather than wait_for(gather(...)): on Python 3.11, cancelling
    # wait_for leaves the gather's CancelledError unretrieved, which asyncio logs with a traceback
    # every time a client disconnects mid-decode.
    pumps = [
        asyncio.ensure_future(pump(proc.stdout, out.on_stdout, job.consume is not None)),
        asyncio.ensure_future(pump(proc.stderr, out.on_stderr, False)),
    ]
    tasks = [*pumps, asyncio.ensure_future(proc.wait())]
    try:
        done, pending = await asyncio.wait(tasks, timeout=job.limits.timeout, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        if pending:
            raise timeout_error(path, job.limits.timeout, job.what)
    finally:
        if proc.returncode is None:
            proc.kill()
        for task in pumps:
            task.cancel()
        # Reaps the child and retrieves every task's outcome, even if this task is cancelled again.
        await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
    return await asyncio.to_thread(job.parse, out.result(proc.returncode))


class MediaWorker:
    def __init__(self, model, settings):
        self.model = model
        self.settings = settings
        self.limits = settings.media_limits
        self.fingerprint = fingerprint(model, settings.dtype)  # names the checkpoint the features belong to
        self.cache = FeatureCache(settings.feature_cache_bytes)
        self.tiers = FeatureTiers(self.cache, None)  # the shared store joins once it is connected
        # Two lanes: most files decode in the light one; a frame decode heavier than
        # heavy_decode_pixels goes to its own lane, one at a time and at low CPU priority, so
        # it cannot hold up the others.
        self._light = asyncio.Semaphore(settings.max_parallel_decodes)
        self._heavy = asyncio.Semaphore(1)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._pending: list[tuple[MediaTensors, asyncio.Future]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._busy = False
        cfg = model.config
        self._prep = json.dumps(
            {
                "model": self.fingerprint,  # not its path: replicas may mount it elsewhere
                "frames": cfg.num_frames,
                "size": cfg.image_size,
                "audio_s": cfg.audio_seconds,
                "layer": cfg.vision_feature_layer,
                "audio_tokens": cfg.audio_tokens,
            },
            sort_keys=True,
        )

    def video_id(self, owner: str, sha256: str, window: Window | None) -> str:
        span = "" if window is None else f"{window.start:g}-{window.end if window.end is not None else ''}"
        message = "\0".join((owner, sha256, self._prep, span)).encode()
        return "vid-" + hmac.new(self.settings.secret.encode(), message, hashlib.sha256).hexdigest()[:40]

    async def lookup(self, owner: str, name: str) -> CachedMedia | None:
        """An earlier upload by its video_id or uuid: from this process, else from the shared store."""
        return await self.tiers.get(owner, name)

    def alias(self, owner: str, name: str, video_id: str) -> None:
        self.tiers.alias(owner, name, video_id)

    async def features(self, path: str, sha256: str, owner: str, window: Window | None = None) -> CachedMedia:
        """Cached embeddings of a file for this owner (L1, then the shared store), or decode,
        encode and project it."""
        video_id = self.video_id(owner, sha256, window)
        cached = await self.tiers.get(owner, video_id)
        if cached is not None:
            return cached
        media = await self.decode(path, window)
        tensors = await asyncio.to_thread(pipeline.preprocess, self.model.processor, media)
        item = CachedMedia(owner, video_id, await self._encode(tensors), media.report)
        self.tiers.put(item)
        return item

    async def frames_features(self, frames, owner: str) -> CachedMedia:
        """Embeddings of still images sent as one video's frames, in order. ``frames`` yields
        each frame's file (an async iterator of ``TempVideo``; each is decoded, then removed)."""
        images, digests = [], []
        async for i, frame in frames:
            try:
                media = await self.decode(frame.path, None)
            finally:
                frame.remove()
            if media.frames is None or not media.info.is_image:
                raise BadParameter(f"frame {i + 1} of the image_url frames is not a still image", param="image_url")
            images.append(media)
            digests.append(frame.sha256)
        video_id = self.video_id(owner, "frames:" + hashlib.sha256(" ".join(digests).encode()).hexdigest(), None)
        cached = await self.tiers.get(owner, video_id)
        if cached is not None:
            return cached
        media = pipeline.frames_media(images)
        tensors = await asyncio.to_thread(pipeline.preprocess, self.model.processor, media)
        item = CachedMedia(owner, video_id, await self._encode(tensors), media.report)
        self.tiers.put(item)
        return item

    # -- decoding -------------------------------------------------------------------------------

    async def decode(self, path: str, window: Window | None) -> Media:
        start = time.perf_counter()
        steps = pipeline.decode_steps(path, self.model.config, None, window, self.limits)
        try:
            jobs = next(steps)
            while True:
                jobs = steps.send(await self._run_step(jobs, path))
        except StopIteration as done:
            media = done.value
        METRICS.decode_seconds.observe(time.perf_counter() - start)
        return media

    async def _run_step(self, jobs: list[FfmpegJob], path: str) -> list:
        heavy = any(job.cost > self.settings.heavy_decode_pixels for job in jobs)
        if heavy:
            METRICS.heavy_decodes.inc()
        async with self._heavy if heavy else self._light:
            return list(await asyncio.gather(*(run_job(job, path, heavy) for job in jobs)))

    # -- batched encoding -----------------------------------------------------------------------

    async def _encode(self, tensors: MediaTensors) -> MediaEmbeddings:
        # Requests that arrive while the encoder is busy wait and go in the next batch together;
        # an idle encoder waits one short window for company.
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((tensors, future))
        if not self._busy:
            if len(self._pending) >= self.settings.encoder_max_batch:
                self._flush()
            elif self._flush_handle is None:
                self._flush_handle = loop.call_later(self.settings.encoder_batch_window_ms / 1000, self._flush)
        return await future

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._busy or not self._pending:
            return
        size = self.settings.encoder_max_batch
        batch, self._pending = self._pending[:size], self._pending[size:]
        batch = [item for item in batch if not item[1].cancelled()]  # its client left while waiting
        if not batch:
            return self._flush()
        self._busy = True
        asyncio.get_running_loop().create_task(self._run_batch(batch))

    async def _run_batch(self, batch) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._encoder, self._encode_batch, [t for t, _ in batch])
        except Exception as exc:  # a failure fails every request of the batch, not the server
            log.exception("encoder batch failed")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._busy = False
            if self._pending:
                loop.call_soon(self._flush)
        METRICS.encode_seconds.observe(time.perf_counter() - start)
        METRICS.encoder_batch_size.observe(len(batch))
        for (_, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)

    @torch.inference_mode()
    def _encode_batch(self, items: list[MediaTensors]) -> list[MediaEmbeddings]:
        return pipeline.project(self.model, pipeline.encode(self.model, items))

    def close(self) -> None:
        self._encoder.shutdown(wait=False, cancel_futures=True)
