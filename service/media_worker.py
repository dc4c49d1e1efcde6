"""From an uploaded file to projected media features, shared by all requests.

* ffmpeg runs in asyncio subprocesses, at most ``max_parallel_decodes`` at once; a subprocess is
  killed when its request is cancelled (client gone) or runs past the ffmpeg timeout.
* SigLIP and Whisper run in one encoder thread; requests that arrive within a short window are
  encoded together (up to ``encoder_max_batch`` videos per batch).
* Features are cached by content hash and preprocessing config (LRU under a byte budget), so a
  follow-up question about the same video skips decoding and encoding; the hash is the
  ``video_id`` the API hands out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from model import media as mediafile
from model.media import MediaError

from .errors import BadRequest, UnsupportedMedia
from .metrics import METRICS

log = logging.getLogger("avchat.media")


@dataclass
class VideoFeatures:
    """Projected features of one file: what the prompt's placeholders are filled with."""

    video_id: str
    video: torch.Tensor | None  # (video_tokens, H)
    audio: torch.Tensor | None  # (audio_tokens, H)
    duration: float

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.video, self.audio) if t is not None)


class FeatureCache:
    """LRU of ``VideoFeatures`` under a byte budget."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self._items: OrderedDict[str, VideoFeatures] = OrderedDict()

    def get(self, key: str) -> VideoFeatures | None:
        item = self._items.get(key)
        if item is None:
            METRICS.cache.labels("miss").inc()
            return None
        self._items.move_to_end(key)
        METRICS.cache.labels("hit").inc()
        return item

    def put(self, key: str, item: VideoFeatures) -> None:
        if item.nbytes > self.budget:
            return
        if key in self._items:
            self.used -= self._items.pop(key).nbytes
        self._items[key] = item
        self.used += item.nbytes
        while self.used > self.budget:
            _, old = self._items.popitem(last=False)
            self.used -= old.nbytes

    def __len__(self) -> int:
        return len(self._items)


async def run_job(job: mediafile.FfmpegJob, path: str, timeout: float):
    """Runs an ffmpeg job as an asyncio subprocess; kills it on timeout or cancellation."""
    proc = await asyncio.create_subprocess_exec(*job.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        if isinstance(exc, asyncio.TimeoutError):
            raise mediafile.timeout_error(path, timeout, job.what) from None
        raise
    return job.parse(proc.returncode, out, err)


class MediaWorker:
    def __init__(self, model, settings):
        self.model = model
        self.processor = model.processor
        self.settings = settings
        self.cache = FeatureCache(settings.feature_cache_bytes)
        self._decodes = asyncio.Semaphore(settings.max_parallel_decodes)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._pending: list[tuple[torch.Tensor | None, torch.Tensor | None, asyncio.Future]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._busy = False
        cfg = model.config
        self._prep_key = json.dumps({"model": str(getattr(model, "source", None) or settings.model),
                                     "frames": cfg.num_frames, "size": cfg.image_size,
                                     "audio_s": cfg.audio_seconds, "layer": cfg.vision_feature_layer,
                                     "audio_tokens": cfg.audio_tokens}, sort_keys=True)

    def cache_key(self, video_id: str) -> str:
        return video_id + "|" + hashlib.sha256(self._prep_key.encode()).hexdigest()[:16]

    def lookup(self, video_id: str) -> VideoFeatures | None:
        return self.cache.get(self.cache_key(video_id))

    async def features(self, path: str, video_id: str) -> VideoFeatures:
        """Cached features of a file, or decode and encode it."""
        cached = self.lookup(video_id)
        if cached is not None:
            return cached
        frames, audio, duration = await self._decode(path)
        pixels, mel = await asyncio.to_thread(self._preprocess, frames, audio)
        video, audio_feats = await self._encode(pixels, mel)
        item = VideoFeatures(video_id=video_id, video=video, audio=audio_feats, duration=duration)
        self.cache.put(self.cache_key(video_id), item)
        return item

    # -- decoding -------------------------------------------------------------------------------

    async def _decode(self, path: str):
        cfg, timeout = self.model.config, self.settings.ffmpeg_timeout_s
        start = time.perf_counter()
        try:
            async with self._decodes:
                info = await run_job(mediafile.probe_job(path), path, timeout)
                if info.duration > self.settings.max_video_seconds:
                    raise BadRequest(f"the video is {info.duration:.0f} s long; this service takes at most "
                                     f"{self.settings.max_video_seconds:.0f} s", param="video",
                                     code="video_too_long")
                jobs = []
                if info.has_video and "video" in cfg.modalities:
                    jobs.append(mediafile.frames_job(path, info, cfg.num_frames, cfg.image_size))
                if info.has_audio and "audio" in cfg.modalities:
                    jobs.append(mediafile.audio_job(path, cfg.audio_seconds))
                if not jobs:
                    raise MediaError("the file has no stream this model can use "
                                     f"(it takes {' and '.join(cfg.modalities)})")
                results = await asyncio.gather(*(run_job(job, path, timeout) for job in jobs))
        except MediaError as exc:
            raise UnsupportedMedia(_without_path(str(exc), path), param="video", code="invalid_media") from None
        frames = next((r for r in results if isinstance(r, mediafile.Frames)), None)
        audio = next((r for r in results if not isinstance(r, mediafile.Frames)), None)
        METRICS.decode_seconds.observe(time.perf_counter() - start)
        return frames, audio, info.duration

    def _preprocess(self, frames, audio):
        pixels = self.processor.pixel_values(frames.frames) if frames is not None else None
        mel = self.processor.audio_features(audio) if audio is not None else None
        return pixels, mel

    # -- batched encoding -----------------------------------------------------------------------

    async def _encode(self, pixels, mel):
        # Requests that arrive while the encoder is busy wait and go in the next batch together;
        # an idle encoder waits one short window for company.
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((pixels, mel, future))
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
        batch = [item for item in batch if not item[2].cancelled()]  # its client left while waiting
        if not batch:
            return self._flush()
        self._busy = True
        asyncio.get_running_loop().create_task(self._run_batch(batch))

    async def _run_batch(self, batch) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._encoder, self._encode_batch,
                                                 [(p, m) for p, m, _ in batch])
        except Exception as exc:  # a failure fails every request of the batch, not the server
            log.exception("encoder batch failed")
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._busy = False
            if self._pending:
                loop.call_soon(self._flush)
        METRICS.encode_seconds.observe(time.perf_counter() - start)
        METRICS.encoder_batch_size.observe(len(batch))
        for (*_, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)

    @torch.inference_mode()
    def _encode_batch(self, items):
        model = self.model
        device = model.device
        videos = [(i, p) for i, (p, _) in enumerate(items) if p is not None]
        audios = [(i, m) for i, (_, m) in enumerate(items) if m is not None]
        out: list[list[torch.Tensor | None]] = [[None, None] for _ in items]
        if videos:
            feats = model.get_video_features([p.to(device) for _, p in videos])
            for j, (i, _) in enumerate(videos):
                out[i][0] = feats[j].clone()
        if audios:
            feats = model.get_audio_features(torch.stack([m for _, m in audios]).to(device))
            for j, (i, _) in enumerate(audios):
                out[i][1] = feats[j].clone()
        return [tuple(o) for o in out]

    def close(self) -> None:
        self._encoder.shutdown(wait=False, cancel_futures=True)


def _without_path(message: str, path: str) -> str:
    # Error messages name the server's temporary file; the client knows its file by another name.
    import os

    return message.replace(path, "the file").replace(os.path.basename(path) + ": ", "")
