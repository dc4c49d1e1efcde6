"""Request logic shared by both chat routes: admission and queueing, prompt assembly from cached
features, generation, and the completion / SSE chunk objects. Errors are raised as
``ServiceError`` subclasses and turned into HTTP answers by the app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import torch

from model.processor import ContextLengthError

from .engine import Engine, SamplingParams
from .errors import BadRequest, Overloaded, UnsupportedMedia
from .media_worker import MediaWorker, VideoFeatures
from .metrics import METRICS
from .protocol import (ChatCompletion, ChatCompletionChunk, ChatMessage, Choice, ChoiceDelta, ChunkChoice,
                       PromptTokensDetails, Usage)


class Admission:
    """At most ``concurrency`` generations run; up to ``queue`` more wait; the rest get 503."""

    def __init__(self, concurrency: int, queue: int):
        self.limit = concurrency + queue
        self.admitted = 0
        self.slots = asyncio.Semaphore(concurrency)

    @contextlib.contextmanager
    def admit(self):
        if self.admitted >= self.limit:
            raise Overloaded("the service is at capacity; retry shortly", headers={"Retry-After": "1"})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def slot(self):
        METRICS.queue_depth.inc()
        try:
            await self.slots.acquire()
        finally:
            METRICS.queue_depth.dec()
        METRICS.active.inc()
        try:
            yield
        finally:
            METRICS.active.dec()
            self.slots.release()


class Prepared:
    """A request ready to generate: its prompt embeddings and token accounting."""

    def __init__(self, embeds: torch.Tensor, counts: dict[str, int], video_id: str | None):
        self.embeds, self.counts, self.video_id = embeds, counts, video_id

    def usage(self, completion_tokens: int) -> Usage:
        prompt = sum(self.counts.values())
        return Usage(prompt_tokens=prompt, completion_tokens=completion_tokens,
                     total_tokens=prompt + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(audio_tokens=self.counts["audio"],
                                                               video_tokens=self.counts["video"],
                                                               text_tokens=self.counts["text"]))


class ChatService:
    def __init__(self, model, worker: MediaWorker, engine: Engine, settings):
        self.model, self.worker, self.engine, self.settings = model, worker, engine, settings
        self.admission = Admission(settings.max_concurrency, settings.max_queue)

    async def prepare(self, messages: list[dict], features: VideoFeatures | None, modalities: list[str] | None,
                      max_tokens: int) -> Prepared:
        use = set(modalities or self.model.config.modalities)
        video = features.video if features is not None and "video" in use else None
        audio = features.audio if features is not None and "audio" in use else None
        if features is not None and video is None and audio is None:
            have = [m for m, t in (("video", features.video), ("audio", features.audio)) if t is not None]
            raise UnsupportedMedia(f"the file has no {' or '.join(sorted(use))} stream to use (it has "
                                   f"{' and '.join(have) or 'nothing usable'})", param="modalities",
                                   code="no_usable_stream")
        try:
            ids, _, counts = self.model.processor.encode_chat(messages, audio is not None, video is not None,
                                                              max_new_tokens=max_tokens)
        except ContextLengthError as exc:
            raise BadRequest(str(exc), param="max_tokens", code="context_length_exceeded") from None
        except ValueError as exc:
            raise BadRequest(str(exc), param="messages") from None
        embeds = await asyncio.to_thread(self._embed, ids, video, audio)
        for kind, n in counts.items():
            METRICS.prompt_tokens.labels(kind).inc(n)
        return Prepared(embeds, counts, features.video_id if features is not None else None)

    @torch.inference_mode()
    def _embed(self, ids, video, audio) -> torch.Tensor:
        model = self.model
        input_ids = torch.tensor([ids], device=model.device)
        return model.embed_inputs(input_ids, video_features=None if video is None else video[None],
                                  audio_features=None if audio is None else audio[None])[0]

    async def complete(self, prepared: Prepared, params: SamplingParams, started: float) -> ChatCompletion:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        text, tokens, finish = [], 0, None
        first = None
        async with self.admission.slot():
            async for delta in self.engine.generate(request_id, prepared.embeds, params):
                if first is None:
                    first = time.perf_counter()
                    METRICS.ttft.observe(first - started)
                text.append(delta.text)
                tokens, finish = delta.completion_tokens, delta.finish_reason
        METRICS.generated_tokens.inc(tokens)
        return ChatCompletion(id=request_id, model=self.settings.model_id, video_id=prepared.video_id,
                              choices=[Choice(message=ChatMessage(content="".join(text)), finish_reason=finish)],
                              usage=prepared.usage(tokens))

    async def stream(self, prepared: Prepared, params: SamplingParams, started: float,
                     include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: role chunk, content chunks, finish chunk, usage chunk, [DONE]."""
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: ChoiceDelta | None, finish=None, usage=None) -> str:
            obj = ChatCompletionChunk(id=request_id, created=created, model=self.settings.model_id,
                                      video_id=prepared.video_id,
                                      choices=[] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)],
                                      usage=usage)
            return f"data: {obj.model_dump_json(exclude_none=False)}\n\n"

        tokens, finished = 0, False
        try:
            async with self.admission.slot():
                yield chunk(ChoiceDelta(role="assistant", content=""))
                first = True
                async for delta in self.engine.generate(request_id, prepared.embeds, params):
                    if first:
                        METRICS.ttft.observe(time.perf_counter() - started)
                        first = False
                    tokens = delta.completion_tokens
                    if delta.text:
                        yield chunk(ChoiceDelta(content=delta.text))
                    if delta.finish_reason:
                        yield chunk(ChoiceDelta(), finish=delta.finish_reason)
                finished = True
            if include_usage:
                yield chunk(None, usage=prepared.usage(tokens))
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            METRICS.aborted.inc()
            raise
        except Exception as exc:  # after the first byte the status is sent: report in-band
            body = {"error": {"message": f"generation failed: {exc}", "type": "server_error", "param": None,
                              "code": None}}
            yield f"data: {json.dumps(body)}\n\n"
        finally:
            METRICS.generated_tokens.inc(tokens)
            if not finished:
                await self.engine.abort(request_id)
