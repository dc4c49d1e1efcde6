"""Request logic for both chat routes, in one place: admission to a generation place, resolving
the media (the request's file, a URL, a video_id or a uuid), the request timeout and the stop
drain, and the answer as a value: a :class:`~service.responses.ChatCompletion`, or a
:class:`ChatStream` of chunks. It knows nothing about HTTP: the routes (``api_router.py``) parse
the request into an :class:`~service.intake.Intake` and turn what comes back into a response.

Errors are raised as domain errors (``errors.py``, ``model``) and mapped at the edge; once a
stream has started, they become its last chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from model import pipeline
from model.errors import ContextLengthError

from .admission import Admission, Ticket
from .engine import SamplingParams
from .errors import BadParameter, RequestTimedOut, ShuttingDown, UnknownVideo, describe
from .fetch import fetch_url, local_file
from .intake import Intake, Saved
from .media_worker import CachedMedia, MediaWorker
from .metrics import METRICS
from .protocol import ChatRequest
from .responses import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    ErrorResponse,
    MediaInfo,
    MediaPart,
    PromptTokensDetails,
    Usage,
)
from .uploads import TempVideo

log = logging.getLogger("avchat.service")
NO_STORE = (
    " (this replica does not have it; with a shared feature store, AVCHAT_FEATURE_STORE, every replica could answer it)"
)


@dataclass
class Prepared:
    """A request ready to generate: its prompt embeddings and its accounting."""

    embeds: object  # torch.Tensor (T, H)
    prompt: pipeline.Prompt
    media: list[CachedMedia]  # each medium's features, in order
    params: SamplingParams
    aliases: list[tuple[str, str]]  # (uuid, video_id) to register once the answer is complete
    reports: list[pipeline.MediaReport]  # what the prompt let the model see and hear of each medium

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
        """The first medium's (each medium's is in ``media.parts``)."""
        return self.media[0].video_id if self.media else None

    @property
    def media_info(self) -> MediaInfo | None:
        """What the model saw and heard: all media together, and each in ``parts``."""
        if not self.reports:
            return None
        parts = [MediaPart(video_id=m.video_id, **r.as_dict()) for m, r in zip(self.media, self.reports)]
        total = {k: sum(getattr(p, k) for p in parts) for k in ("duration_s", "frames", "audio_s", "audio_truncated_s")}
        total = {k: round(v, 3) if isinstance(v, float) else v for k, v in total.items()}
        return MediaInfo(**total, parts=parts)


class ChatService:
    def __init__(self, model, worker: MediaWorker, engine, settings, generation_defaults: dict, admission: Admission):
        self.model, self.worker, self.engine, self.settings = model, worker, engine, settings
        self.defaults = generation_defaults
        self.admission = admission
        # Set when the stop's drain is over: whatever is still running ends with ShuttingDown.
        self._stopped: asyncio.Future = asyncio.get_running_loop().create_future()

    # -- the entry point ------------------------------------------------------------------------

    async def create(self, intake: Intake, owner: str) -> ChatCompletion | ChatStream:
        """The answer to one chat request: a completion, or (``stream``) a stream of chunks. The
        request's file is removed once its features are taken, whatever happens."""
        chat = intake.chat
        try:
            params = chat.to_sampling_params(self.defaults, self.settings.default_max_tokens)
            ticket = self.admission.generations.take(params.max_tokens)  # only once the body is here
            deadline = time.monotonic() + self.settings.request_timeout_s
            try:
                preparing = self._prepare(chat, intake, owner, params, deadline)
                prepared = await self._race(preparing, deadline)
            except BaseException:
                ticket.release()
                raise
        finally:
            intake.discard()
        if chat.stream:
            return ChatStream(self, prepared, chat.include_usage, deadline, ticket, owner)
        try:
            result = await self._race(self._complete(prepared, ticket, owner), deadline)
        finally:
            ticket.release()
        return result

    def stop(self) -> None:
        """The drain is over: requests still running end now (503 or an in-band error)."""
        if not self._stopped.done():
            self._stopped.set_result(None)

    # -- preparing ------------------------------------------------------------------------------

    async def _prepare(
        self, chat: ChatRequest, intake: Intake, owner: str, params: SamplingParams, deadline: float
    ) -> Prepared:
        media = [
            await self._medium(ref, saved, owner, deadline) for ref, saved in zip(chat.media, intake.saved, strict=True)
        ]
        p, embeds = await asyncio.to_thread(self._prompt, chat, media, params)
        for kind, n in p.counts.items():
            METRICS.prompt_tokens.labels(kind).inc(n)
        aliases = [(ref.alias, m.video_id) for ref, m in zip(chat.media, media) if ref.alias]
        reports = [pipeline.heard(m.report, p, self.model.config, i) for i, m in enumerate(media)]
        return Prepared(embeds, p, media, params, aliases, reports)

    async def _medium(self, ref, saved: Saved, owner: str, deadline: float) -> CachedMedia:
        """One medium's features: from its file (sent, fetched or read), its frames, or by name."""
        video, fetched = saved.file, None
        if ref.kind == "url":  # http(s) or file:// (data: URLs are files already)
            video = fetched = await self._resolve_url(ref.value, ref.param, deadline)
        try:
            if ref.kind == "frames":
                return await self.worker.frames_features(self._frames(ref, saved.frames, deadline), owner)
            if video is not None:
                return await self.worker.features(video.path, video.sha256, owner, ref.window)
            media = await self.worker.lookup(owner, ref.value)
            if media is None:
                shared = "" if self.worker.tiers.store is not None else NO_STORE
                raise UnknownVideo(
                    f"unknown or expired {ref.param} {ref.value!r}; send the video again{shared}", param=ref.param
                )
            return media
        finally:  # its files go as soon as its features are taken (and their upload places with them)
            saved.remove()
            if fetched is not None:
                fetched.remove()

    async def _frames(self, ref, sent: list, deadline: float):
        """Each frame's file in order: saved at intake (data: URLs), else fetched or read now, one
        at a time (a frame holds its upload place only while it is decoded)."""
        if len(ref.frames) > self.model.config.num_frames:
            raise BadParameter(
                f"{len(ref.frames)} image_url frames; this model samples {self.model.config.num_frames} frames "
                "of a video: send fewer",
                param="messages",
                code="too_many_frames",
            )
        for i, url in enumerate(ref.frames):
            saved = sent[i] if i < len(sent) else None
            yield i, saved if saved is not None else await self._resolve_url(url, "image_url", deadline)

    async def _resolve_url(self, url: str, param: str, deadline: float) -> TempVideo:
        s = self.settings
        if url.startswith("file:"):
            return await asyncio.to_thread(local_file, url, s.allowed_local_media_path, param)
        place = self.admission.uploads.take()
        try:
            remaining = max(deadline - time.monotonic(), 0.001)
            return await fetch_url(url, s.allowed_video_hosts, s.temp_dir, s.max_upload_bytes, remaining, place, param)
        except BaseException:
            place.release()
            raise

    def _prompt(self, chat: ChatRequest, media: list[CachedMedia], params: SamplingParams):
        """Tokenizes and embeds the prompt (in a worker thread: tokenizing is not the loop's job)."""
        parts = [
            pipeline.Part(m.embeddings, ref.message, ref.modalities) for ref, m in zip(chat.media, media, strict=True)
        ]
        ask = functools.partial(
            pipeline.prompt,
            self.model.processor,
            chat.messages,
            parts,
            chat.input_modalities,
            max_audio_windows=chat.max_audio_windows,
        )
        try:
            try:
                p = ask(max_new_tokens=params.max_tokens)
            except ContextLengthError as exc:
                room = params.max_tokens - exc.over
                if chat.max_tokens is not None or room < 1:
                    raise
                # max_tokens left out: the answer gets the room the prompt leaves (as vLLM's default)
                p = ask(max_new_tokens=room)
                params.max_tokens = room
        except ValueError as exc:
            if type(exc) is not ValueError:  # the model's own errors (context, media, modalities)
                raise
            raise BadParameter(str(exc), param="messages") from None  # the chat itself: roles, order
        return p, pipeline.prompt_embeds(self.model, p, parts)

    async def _race(self, aw, deadline: float):
        """Awaits ``aw`` until the deadline (504) or the end of a stop's drain (503), cancelling it."""
        task = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait(
                {task, self._stopped}, timeout=max(deadline - time.monotonic(), 0.001), return_when="FIRST_COMPLETED"
            )
            if task in done:
                return task.result()
            if self._stopped.done():
                raise ShuttingDown("the service is stopping; retry", headers={"Retry-After": "1"})
            raise RequestTimedOut(f"the request took longer than {self.settings.request_timeout_s:g} s")
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    # -- answering ------------------------------------------------------------------------------

    def _remember(self, prepared: Prepared, owner: str) -> None:
        """Registers the request's uuids for their media, once the answer is complete."""
        for alias, video_id in prepared.aliases:
            self.worker.alias(owner, alias, video_id)

    async def _complete(self, prepared: Prepared, ticket: Ticket, owner: str) -> ChatCompletion:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        text, tokens, finish = [], 0, None
        async with self.admission.generations.slot():
            async for delta in self.engine.generate(request_id, prepared.embeds, prepared.params):
                if ticket.first_token is None:
                    ticket.started()
                    METRICS.ttft.observe(ticket.first_token - ticket.taken)
                text.append(delta.text)
                tokens, finish = delta.completion_tokens, delta.finish_reason
        ticket.release(tokens)
        METRICS.generated_tokens.inc(tokens)
        self._remember(prepared, owner)
        return ChatCompletion(
            id=request_id,
            model=self.settings.model_id,
            video_id=prepared.video_id,
            media=prepared.media_info,
            choices=[Choice(message=ChatMessage(content="".join(text)), finish_reason=finish)],
            usage=prepared.usage(tokens),
        )


class ChatStream:
    """An answer as it is generated: role chunk, content chunks, finish chunk, usage chunk. The
    last chunk carries ``media``; an error after the first chunk (the timeout, the end of a stop's
    drain, the engine) is the stream's last item, an :class:`ErrorResponse`. The generation place
    is given back when the stream ends or is closed, or at the latest when it is collected."""

    def __init__(self, service: ChatService, prepared: Prepared, include_usage: bool, deadline, ticket, owner):
        self.service, self.prepared, self.include_usage = service, prepared, include_usage
        self.deadline, self.ticket, self.owner = deadline, ticket, owner
        self.request_id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._chunks = self._generate()

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk | ErrorResponse]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()
        self.ticket.release()

    def __del__(self):
        self.ticket.release()

    def _chunk(self, delta: ChoiceDelta | None, finish=None, usage=None, last=False) -> ChatCompletionChunk:
        p = self.prepared
        return ChatCompletionChunk(
            id=self.request_id,
            created=self.created,
            model=self.service.settings.model_id,
            video_id=p.video_id,
            media=p.media_info if last else None,
            choices=[] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)],
            usage=usage,
        )

    async def _generate(self):
        service, p, ticket = self.service, self.prepared, self.ticket
        tokens = 0
        try:
            async with service.admission.generations.slot(lambda aw: service._race(aw, self.deadline)):
                yield self._chunk(ChoiceDelta(role="assistant", content=""))
                deltas = service.engine.generate(self.request_id, p.embeds, p.params).__aiter__()
                try:
                    while True:
                        try:
                            delta = await service._race(deltas.__anext__(), self.deadline)
                        except StopAsyncIteration:
                            break
                        if ticket.first_token is None:
                            ticket.started()
                            METRICS.ttft.observe(ticket.first_token - ticket.taken)
                        tokens = delta.completion_tokens
                        if delta.text:
                            yield self._chunk(ChoiceDelta(content=delta.text))
                        if delta.finish_reason:
                            yield self._chunk(ChoiceDelta(), finish=delta.finish_reason, last=not self.include_usage)
                            break
                finally:
                    await deltas.aclose()
            if self.include_usage:
                yield self._chunk(None, usage=p.usage(tokens), last=True)
            ticket.release(tokens)
            service._remember(p, self.owner)
        except asyncio.CancelledError:
            METRICS.aborted.inc()
            raise
        except Exception as exc:  # after the first chunk the status is sent: report in-band
            status, body, _ = describe(exc)
            if status >= 500 and status not in (503, 504):
                log.exception("stream failed")
            yield ErrorResponse.model_validate(body)
        finally:
            ticket.release(tokens)
            METRICS.generated_tokens.inc(tokens)
