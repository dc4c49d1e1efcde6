"""Request logic for both chat routes, in one place: receiving the body (its own bounded pool, at
a minimum rate), admission to a generation place, resolving the media (upload, URL, video_id or
uuid), the request timeout and client disconnects, and the completion or its SSE chunks.

Errors are raised as domain errors (``errors.py``, ``model``) and mapped at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from model import pipeline
from model.media import MediaError
from model.processor import ContextLengthError

from .engine import SamplingParams
from .errors import AtCapacity, BadParameter, ClientGone, RequestTimedOut, UnknownVideo, describe
from .fetch import fetch_url, local_file
from .forms import FILE_FIELDS, parse_form
from .media_worker import CachedMedia, MediaWorker
from .metrics import METRICS
from .protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChatRequest,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    MediaInfo,
    MediaRef,
    PromptTokensDetails,
    Usage,
    parse_completion_request,
)
from .uploads import BodyReader, TempVideo, read_form, read_json, save_data_url

log = logging.getLogger("avchat.service")


class Ticket:
    def __init__(self, places: Places):
        self.places, self.started, self.done = places, time.monotonic(), False

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.places.held -= 1
            held = time.monotonic() - self.started
            average = self.places.average_s
            self.places.average_s = held if average is None else 0.8 * average + 0.2 * held


class Places:
    """A bounded number of holders; a full house answers 503 with a Retry-After from the real
    backlog (holders ahead of you x the average hold time / places)."""

    def __init__(self, places: int, queue: int, what: str):
        self.places, self.limit, self.what = places, places + queue, what
        self.held = 0
        self.average_s: float | None = None  # seconds a place is held, on average (none measured yet)

    def take(self) -> Ticket:
        if self.held >= self.limit:
            wait = (self.held - self.places + 1) * (self.average_s or 1.0) / self.places
            raise AtCapacity(
                f"the service is at capacity ({self.what}); retry shortly",
                headers={"Retry-After": str(min(300, max(1, math.ceil(wait))))},
            )
        self.held += 1
        return Ticket(self)


class Admission(Places):
    """At most ``concurrency`` generations run; up to ``queue`` more wait; the rest get 503."""

    def __init__(self, concurrency: int, queue: int):
        super().__init__(concurrency, queue, "generations")
        self.slots = asyncio.Semaphore(concurrency)

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


@dataclass
class Prepared:
    """A request ready to generate: its prompt embeddings and its accounting."""

    embeds: object  # torch.Tensor (T, H)
    prompt: pipeline.Prompt
    media: CachedMedia | None
    params: SamplingParams

    def usage(self, completion_tokens: int) -> Usage:
        counts = self.prompt.counts
        prompt = sum(counts.values())
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion_tokens,
            total_tokens=prompt + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(
                audio_tokens=counts["audio"], video_tokens=counts["video"], text_tokens=counts["text"]
            ),
        )

    @property
    def video_id(self) -> str | None:
        return self.media.video_id if self.media else None

    @property
    def media_info(self) -> MediaInfo | None:
        """What the model saw and heard: the streams this request left out count as none."""
        if self.media is None:
            return None
        report = self.media.report.as_dict()
        if not self.prompt.audio:
            report.update(audio_s=0.0, audio_truncated_s=0.0)
        if not self.prompt.video:
            report.update(frames=0)
        return MediaInfo(**report)


class ChatService:
    def __init__(self, model, worker: MediaWorker, engine, settings, generation_defaults: dict):
        self.model, self.worker, self.engine, self.settings = model, worker, engine, settings
        self.defaults = generation_defaults
        self.admission = Admission(settings.max_concurrency, settings.max_queue)
        self.uploads = Places(settings.max_uploads, 0, "uploads")

    async def handle(self, request: Request, route: str):
        """The one entry point of both chat routes."""
        started = time.perf_counter()
        owner = request.scope.get("state", {}).get("owner", "")
        chat, video = await self._receive(request, route)
        try:
            ticket = self.admission.take()  # a generation place: only once the body is here
            try:
                deadline = time.monotonic() + self.settings.request_timeout_s
                prepared = await self._bounded(request, self._prepare(chat, video, owner), deadline)
            except BaseException:
                ticket.release()
                raise
        finally:
            if video is not None:
                video.remove()
        if chat.stream:
            return StreamingResponse(
                self._events(prepared, chat.include_usage, deadline, started, route, ticket),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            result = await self._bounded(request, self._complete(prepared, started), deadline)
        finally:
            ticket.release()
        METRICS.e2e.labels(route).observe(time.perf_counter() - started)
        return JSONResponse(result.model_dump())

    # -- receiving ------------------------------------------------------------------------------

    async def _receive(self, request: Request, route: str) -> tuple[ChatRequest, TempVideo | None]:
        s = self.settings
        ticket = self.uploads.take()
        METRICS.uploads.inc()
        try:
            if route == "/v1/video/chat":
                reader = BodyReader(
                    request.receive,
                    s.max_upload_bytes + s.max_form_fields * s.max_field_bytes,
                    s.upload_min_bytes,
                    s.upload_rate_window_s,
                    "upload",
                )
                form = await read_form(
                    request.headers.get("content-type", ""),
                    reader,
                    s.temp_dir,
                    s.max_upload_bytes,
                    FILE_FIELDS,
                    s.max_form_fields,
                    s.max_field_bytes,
                )
                try:
                    return parse_form(form.fields, form.file_field), form.file
                except BaseException:
                    if form.file is not None:
                        form.file.remove()
                    raise
            reader = BodyReader(request.receive, s.max_json_bytes, s.upload_min_bytes, s.upload_rate_window_s)
            chat = parse_completion_request(await read_json(reader))
            return chat, await self._fetch(request, chat.media)
        finally:
            METRICS.uploads.dec()
            ticket.release()

    async def _fetch(self, request: Request, media: MediaRef | None) -> TempVideo | None:
        if media is None or media.kind != "url":
            return None
        s, url = self.settings, media.value
        if url.startswith("data:"):
            return await asyncio.to_thread(save_data_url, url, s.temp_dir, s.max_upload_bytes, media.param)
        if url.startswith("file:"):
            return await asyncio.to_thread(local_file, url, s.allowed_local_media_path, media.param)
        return await _watch(
            request,
            fetch_url(url, s.allowed_video_hosts, s.temp_dir, s.max_upload_bytes, s.request_timeout_s, media.param),
        )

    # -- preparing ------------------------------------------------------------------------------

    async def _prepare(self, chat: ChatRequest, video: TempVideo | None, owner: str) -> Prepared:
        media = None
        if video is not None:
            try:
                media = await self.worker.features(video.path, video.sha256, owner, chat.window)
            except MediaError as exc:
                raise type(exc)(str(exc).replace(os.path.basename(video.path) + ": ", "")) from None
            if chat.media.alias:
                self.worker.cache.alias(owner, chat.media.alias, media.video_id)
        elif chat.media is not None:
            media = self.worker.lookup(owner, chat.media.value)
            if media is None:
                raise UnknownVideo(
                    f"unknown or expired {chat.media.param} {chat.media.value!r}; send the video again",
                    param=chat.media.param,
                )
        params = chat.to_sampling_params(self.defaults, self.settings.default_max_tokens)
        try:
            p = pipeline.prompt(
                self.model.processor,
                chat.messages,
                media.embeddings if media else None,
                chat.input_modalities,
                max_new_tokens=params.max_tokens,
            )
        except (MediaError, ContextLengthError):
            raise
        except ValueError as exc:  # the chat itself: roles, order
            raise BadParameter(str(exc), param="messages") from None
        embeds = await asyncio.to_thread(pipeline.prompt_embeds, self.model, p, media.embeddings if media else None)
        for kind, n in p.counts.items():
            METRICS.prompt_tokens.labels(kind).inc(n)
        return Prepared(embeds, p, media, params)

    async def _bounded(self, request: Request, coro, deadline: float):
        """Runs ``coro`` until the deadline (504) or the client's departure (499), cancelling it."""
        try:
            return await asyncio.wait_for(_watch(request, coro), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            raise RequestTimedOut(f"the request took longer than {self.settings.request_timeout_s:g} s") from None

    # -- answering ------------------------------------------------------------------------------

    async def _complete(self, prepared: Prepared, started: float) -> ChatCompletion:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        text, tokens, finish, first = [], 0, None, None
        async with self.admission.slot():
            async for delta in self.engine.generate(request_id, prepared.embeds, prepared.params):
                if first is None:
                    first = time.perf_counter()
                    METRICS.ttft.observe(first - started)
                text.append(delta.text)
                tokens, finish = delta.completion_tokens, delta.finish_reason
        METRICS.generated_tokens.inc(tokens)
        return ChatCompletion(
            id=request_id,
            model=self.settings.model_id,
            video_id=prepared.video_id,
            media=prepared.media_info,
            choices=[Choice(message=ChatMessage(content="".join(text)), finish_reason=finish)],
            usage=prepared.usage(tokens),
        )

    async def _events(
        self, prepared: Prepared, include_usage: bool, deadline: float, started: float, route: str, ticket
    ) -> AsyncIterator[str]:
        """Server-sent events: role chunk, content chunks, finish chunk, usage chunk, [DONE]. The
        last chunk carries ``media``; an error after the first byte goes out in-band."""
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: ChoiceDelta | None, finish=None, usage=None, last=False) -> str:
            obj = ChatCompletionChunk(
                id=request_id,
                created=created,
                model=self.settings.model_id,
                video_id=prepared.video_id,
                media=prepared.media_info if last else None,
                choices=[] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)],
                usage=usage,
            )
            return f"data: {obj.model_dump_json()}\n\n"

        tokens = 0
        try:
            async with self.admission.slot():
                yield chunk(ChoiceDelta(role="assistant", content=""))
                stream = self.engine.generate(request_id, prepared.embeds, prepared.params).__aiter__()
                first = True
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RequestTimedOut(f"the request took longer than {self.settings.request_timeout_s:g} s")
                    try:
                        delta = await asyncio.wait_for(stream.__anext__(), remaining)
                    except StopAsyncIteration:
                        break
                    except asyncio.TimeoutError:
                        await stream.aclose()
                        raise RequestTimedOut(
                            f"the request took longer than {self.settings.request_timeout_s:g} s"
                        ) from None
                    if first:
                        METRICS.ttft.observe(time.perf_counter() - started)
                        first = False
                    tokens = delta.completion_tokens
                    if delta.text:
                        yield chunk(ChoiceDelta(content=delta.text))
                    if delta.finish_reason:
                        yield chunk(ChoiceDelta(), finish=delta.finish_reason, last=not include_usage)
                        break
                await stream.aclose()
            if include_usage:
                yield chunk(None, usage=prepared.usage(tokens), last=True)
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            METRICS.aborted.inc()
            raise
        except Exception as exc:  # after the first byte the status is sent: report in-band
            status, body, _ = describe(exc)
            if status >= 500:
                log.exception("stream failed")
            yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            ticket.release()
            METRICS.generated_tokens.inc(tokens)
            METRICS.e2e.labels(route).observe(time.perf_counter() - started)


async def _watch(request: Request, coro):
    """Runs ``coro``, cancelling it (and the ffmpeg it runs) if the client disconnects."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
