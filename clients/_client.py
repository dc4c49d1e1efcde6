"""``Client`` and ``AsyncClient``: the sync and async twins, openai-python style."""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

import httpx

from . import _base
from ._base import Upload, VideoInput, drop_none, is_video_id, video_form
from ._errors import APIConnectionError, APIError, APITimeoutError, status_error
from ._types import ChatCompletion, ChatCompletionChunk, ModelList

T = TypeVar("T")


def video_url_part(path: str | os.PathLike) -> dict:
    """A ``video_url`` content part holding a local file as a data: URL (for chat.completions)."""
    mime = mimetypes.guess_type(os.fspath(path))[0] or "video/mp4"
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return {"type": "video_url", "video_url": {"url": f"data:{mime};base64,{data}"}}


# -- streams --------------------------------------------------------------------------------------

_DONE = object()


class _ChunkParser:
    """Server-sent lines -> typed chunks; raises on an error event; collects the text so the
    caller can be told the whole answer at ``[DONE]``."""

    def __init__(self, cast, request: httpx.Request, on_done: Callable[[str], None] | None):
        self.cast, self.request, self.on_done = cast, request, on_done
        self.text: list[str] = []

    def feed(self, line: str):
        event = _base.parse_sse(line)
        if event is None:
            return None
        kind, body = event
        if kind == "done":
            if self.on_done:
                self.on_done("".join(self.text))
            return _DONE
        if kind == "error":
            raise _base.stream_error(body, self.request)
        chunk = self.cast.model_validate(body)
        self.text.extend(c.delta.content or "" for c in getattr(chunk, "choices", []))
        return chunk


class Stream(Generic[T]):
    """Server-sent chunks as typed objects. Iterate it; use it as a context manager, or leave it
    early: the connection is closed either way."""

    def __init__(self, response: httpx.Response, cast: type[T], on_done: Callable[[str], None] | None = None):
        self.response = response
        self._cast = cast
        self._on_done = on_done
        self._iterator: Iterator[T] | None = None

    def _iter(self) -> Iterator[T]:
        parser = _ChunkParser(self._cast, self.response.request, self._on_done)
        try:
            for line in self.response.iter_lines():
                chunk = parser.feed(line)
                if chunk is _DONE:
                    return
                if chunk is not None:
                    yield chunk
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.response.request) from exc
        finally:
            self.response.close()

    def __iter__(self) -> Iterator[T]:
        # A fresh generator for each loop and not kept here: a loop left with `break` drops it,
        # and its `finally` closes the connection.
        return self._iter()

    def __next__(self) -> T:
        if self._iterator is None:
            self._iterator = self._iter()
        return next(self._iterator)

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
        self.response.close()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a stream dropped half-read must not hold its connection
        try:
            self.response.close()
        except Exception:
            pass


class AsyncStream(Generic[T]):
    def __init__(self, response: httpx.Response, cast: type[T], on_done: Callable[[str], None] | None = None):
        self.response = response
        self._cast = cast
        self._on_done = on_done
        self._iterator = self._iter()

    async def _iter(self) -> AsyncIterator[T]:
        parser = _ChunkParser(self._cast, self.response.request, self._on_done)
        try:
            async for line in self.response.aiter_lines():
                chunk = parser.feed(line)
                if chunk is _DONE:
                    return
                if chunk is not None:
                    yield chunk
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.response.request) from exc
        finally:
            await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterator

    async def __anext__(self) -> T:
        return await self._iterator.__anext__()

    async def close(self) -> None:
        await self._iterator.aclose()
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# -- clients ---------------------------------------------------------------------------------------


def _transport_error(exc: httpx.TransportError, request: httpx.Request) -> APIError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request)
    return APIConnectionError(f"Connection error: {exc}", request=request)


class _Common:
    def __init__(self, *, base_url, api_key, timeout, max_retries, default_headers):
        self.base_url, self.api_key = _base.resolve_config(base_url, api_key)
        self.timeout = timeout if timeout is not None else _base.DEFAULT_TIMEOUT
        self.max_retries = _base.DEFAULT_MAX_RETRIES if max_retries is None else max_retries
        self._headers = _base.headers(self.api_key, default_headers)

    def _attempt(self, method: str, path: str, *, json, data, upload: Upload | None, stream: bool, timeout
                 ) -> tuple[httpx.Request, Callable[[], None]]:
        """One attempt's request, with the upload opened afresh; call the returned cleanup after."""
        files, cleanup = None, lambda: None
        if upload is not None:
            part, cleanup = upload.open()
            files = {"video": part}
        try:
            return self._build(self._http, method, path, json=json, data=data, files=files, timeout=timeout,
                               stream=stream), cleanup
        except BaseException:
            cleanup()
            raise

    def _build(self, http, method: str, path: str, *, json=None, data=None, files=None, timeout=None,
               stream=False) -> httpx.Request:
        headers = dict(self._headers)
        if stream:
            headers["Accept"] = "text/event-stream"
        return http.build_request(method, self.base_url + path, json=json, data=data, files=files, headers=headers,
                                  timeout=timeout if timeout is not None else self.timeout)


class Client(_Common):
    """Synchronous client for the avchat video chat API.

    Arguments are keyword-only. ``base_url`` falls back to ``$AVCHAT_BASE_URL`` (then
    ``http://127.0.0.1:8000``), ``api_key`` to ``$AVCHAT_API_KEY``. ``timeout`` is seconds or an
    ``httpx.Timeout``; ``max_retries`` (default 2) applies to connection errors, 408, 409, 429 and
    5xx. Pass ``http_client`` to use your own ``httpx.Client``.
    """

    def __init__(self, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float | httpx.Timeout | None = None, max_retries: int | None = None,
                 default_headers: dict[str, str] | None = None, http_client: httpx.Client | None = None):
        super().__init__(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                         default_headers=default_headers)
        self._http = http_client or httpx.Client()
        self._owns_http = http_client is None
        self.video = _Video(self)
        self.chat = _Chat(self)
        self.models = _Models(self)

    def request(self, method: str, path: str, *, json=None, data=None, upload: Upload | None = None,
                stream: bool = False, timeout=None) -> httpx.Response:
        """Sends with retries; returns a successful response (open, when streaming)."""
        for attempt in range(self.max_retries + 1):
            request, cleanup = self._attempt(method, path, json=json, data=data, upload=upload, stream=stream,
                                             timeout=timeout)
            response = None
            try:
                try:
                    response = self._http.send(request, stream=True)
                except httpx.TransportError as exc:
                    error: APIError = _transport_error(exc, request)
                else:
                    if response.status_code < 400:
                        if not stream:
                            response.read()
                        return response
                    response.read()
                    error = status_error(response, _base.error_body(response))
                    response.close()
            finally:
                cleanup()
            if attempt >= self.max_retries or not _base.should_retry(error):
                raise error
            time.sleep(_base.retry_delay(attempt, response))
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Common):
    """Asynchronous twin of :class:`Client` (same arguments and environment variables)."""

    def __init__(self, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float | httpx.Timeout | None = None, max_retries: int | None = None,
                 default_headers: dict[str, str] | None = None, http_client: httpx.AsyncClient | None = None):
        super().__init__(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                         default_headers=default_headers)
        self._http = http_client or httpx.AsyncClient()
        self._owns_http = http_client is None
        self.video = _AsyncVideo(self)
        self.chat = _AsyncChat(self)
        self.models = _AsyncModels(self)

    async def request(self, method: str, path: str, *, json=None, data=None, upload: Upload | None = None,
                      stream: bool = False, timeout=None) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            request, cleanup = self._attempt(method, path, json=json, data=data, upload=upload, stream=stream,
                                             timeout=timeout)
            response = None
            try:
                try:
                    response = await self._http.send(request, stream=True)
                except httpx.TransportError as exc:
                    error: APIError = _transport_error(exc, request)
                else:
                    if response.status_code < 400:
                        if not stream:
                            await response.aread()
                        return response
                    await response.aread()
                    error = status_error(response, _base.error_body(response))
                    await response.aclose()
            finally:
                cleanup()
            if attempt >= self.max_retries or not _base.should_retry(error):
                raise error
            await asyncio.sleep(_base.retry_delay(attempt, response))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# -- resources -------------------------------------------------------------------------------------


def _video_args(video, video_id, messages, prompt, stream, modalities, max_tokens, temperature, top_p, seed, stop,
                stream_options):
    if video is not None and is_video_id(video):
        video, video_id = None, video
    if video is None and not video_id:
        raise ValueError("pass video= (a path, bytes or a binary file) or a video_id from an earlier answer")
    if video is not None and video_id:
        raise ValueError("pass video or video_id, not both")
    form = video_form(video_id=video_id, messages=messages, prompt=prompt, stream=stream, modalities=modalities,
                      max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
                      stream_options=stream_options)
    return form, (Upload(video) if video is not None else None)


class _VideoChat:
    def __init__(self, client: Client):
        self._client = client

    def create(self, video: VideoInput | None = None, *, video_id: str | None = None,
               messages: list[dict] | None = None, prompt: str | None = None, stream: bool = False,
               modalities: list[str] | str | None = None, max_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
               stop: str | list[str] | None = None, stream_options: dict | None = None, timeout=None,
               _on_done: Callable[[str], None] | None = None):
        """Ask about a video. ``video`` is a path, bytes, a binary file object or a video_id.
        Returns a :class:`ChatCompletion`, or with ``stream=True`` a ``Stream[ChatCompletionChunk]``."""
        form, upload = _video_args(video, video_id, messages, prompt, stream, modalities, max_tokens, temperature,
                                   top_p, seed, stop, stream_options)
        response = self._client.request("POST", "/v1/video/chat", data=form, upload=upload, stream=stream,
                                        timeout=timeout)
        if stream:
            return Stream(response, ChatCompletionChunk, _on_done)
        return ChatCompletion.model_validate(response.json())

    def conversation(self, video: VideoInput, **defaults) -> Conversation:
        """A multi-turn chat about one video, uploaded once (later turns send its video_id)."""
        return Conversation(self, video, **defaults)


class _AsyncVideoChat:
    def __init__(self, client: AsyncClient):
        self._client = client

    async def create(self, video: VideoInput | None = None, *, video_id: str | None = None,
                     messages: list[dict] | None = None, prompt: str | None = None, stream: bool = False,
                     modalities: list[str] | str | None = None, max_tokens: int | None = None,
                     temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                     stop: str | list[str] | None = None, stream_options: dict | None = None, timeout=None,
                     _on_done: Callable[[str], None] | None = None):
        form, upload = _video_args(video, video_id, messages, prompt, stream, modalities, max_tokens, temperature,
                                   top_p, seed, stop, stream_options)
        response = await self._client.request("POST", "/v1/video/chat", data=form, upload=upload, stream=stream,
                                              timeout=timeout)
        if stream:
            return AsyncStream(response, ChatCompletionChunk, _on_done)
        return ChatCompletion.model_validate(response.json())

    def conversation(self, video: VideoInput, **defaults) -> AsyncConversation:
        return AsyncConversation(self, video, **defaults)


class Conversation:
    """Keeps the history and the video_id: the first question uploads the video, later ones don't.

        chat = client.video.chat.conversation("clip.mp4")
        print(chat.ask("What do you hear?").choices[0].message.content)
        for chunk in chat.ask("And what do you see?", stream=True): ...
    """

    def __init__(self, resource, video: VideoInput, *, system: str | None = None, **defaults):
        self._resource = resource
        self._video = video
        self.video_id: str | None = video if is_video_id(video) else None
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.defaults = defaults

    def _args(self, question: str, stream: bool, overrides: dict) -> dict:
        self.messages.append({"role": "user", "content": question})
        args = {**self.defaults, **overrides, "messages": list(self.messages), "stream": stream}
        if self.video_id:
            args["video_id"] = self.video_id
        else:
            args["video"] = self._video
        return args

    def _answered(self, text: str, video_id: str | None) -> None:
        self.messages.append({"role": "assistant", "content": text})
        self.video_id = self.video_id or video_id

    def ask(self, question: str, *, stream: bool = False, **overrides):
        args = self._args(question, stream, overrides)
        try:
            if stream:
                holder: dict[str, Stream] = {}

                def done(text: str) -> None:
                    self._answered(text, holder["stream"].video_id)

                result = self._resource.create(**args, _on_done=done)
                holder["stream"] = _VideoIdTracker(result)
                return holder["stream"]
            result = self._resource.create(**args)
        except BaseException:
            self.messages.pop()
            raise
        self._answered(result.choices[0].message.content or "", result.video_id)
        return result


class _VideoIdTracker:
    """Wraps a stream to remember the video_id its chunks carry."""

    def __init__(self, stream: Stream):
        self._stream = stream
        self.video_id: str | None = None

    def __iter__(self):
        for chunk in self._stream:
            self.video_id = self.video_id or chunk.video_id
            yield chunk

    def close(self):
        self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncConversation(Conversation):
    async def ask(self, question: str, *, stream: bool = False, **overrides):  # type: ignore[override]
        args = self._args(question, stream, overrides)
        try:
            if stream:
                tracker: dict[str, Any] = {}

                def done(text: str) -> None:
                    self._answered(text, tracker.get("video_id"))

                result = await self._resource.create(**args, _on_done=done)

                async def chunks():
                    async for chunk in result:
                        tracker["video_id"] = tracker.get("video_id") or chunk.video_id
                        yield chunk
                return chunks()
            result = await self._resource.create(**args)
        except BaseException:
            self.messages.pop()
            raise
        self._answered(result.choices[0].message.content or "", result.video_id)
        return result


def _completions_body(messages, model, stream, max_tokens, temperature, top_p, seed, stop, stream_options,
                      modalities, video_id) -> dict:
    return drop_none({"model": model, "messages": list(messages), "stream": stream or None,
                      "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                      "stop": stop, "stream_options": stream_options, "modalities": modalities,
                      "video_id": video_id})


class _Completions:
    def __init__(self, client: Client):
        self._client = client

    def create(self, *, messages: list[dict], model: str | None = None, stream: bool = False,
               max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
               seed: int | None = None, stop: str | list[str] | None = None, stream_options: dict | None = None,
               modalities: list[str] | None = None, video_id: str | None = None, timeout=None):
        """OpenAI Chat Completions; put the video in a message as ``video_url_part(path)``."""
        body = _completions_body(messages, model, stream, max_tokens, temperature, top_p, seed, stop,
                                 stream_options, modalities, video_id)
        response = self._client.request("POST", "/v1/chat/completions", json=body, stream=stream, timeout=timeout)
        if stream:
            return Stream(response, ChatCompletionChunk)
        return ChatCompletion.model_validate(response.json())


class _AsyncCompletions:
    def __init__(self, client: AsyncClient):
        self._client = client

    async def create(self, *, messages: list[dict], model: str | None = None, stream: bool = False,
                     max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                     seed: int | None = None, stop: str | list[str] | None = None,
                     stream_options: dict | None = None, modalities: list[str] | None = None,
                     video_id: str | None = None, timeout=None):
        body = _completions_body(messages, model, stream, max_tokens, temperature, top_p, seed, stop,
                                 stream_options, modalities, video_id)
        response = await self._client.request("POST", "/v1/chat/completions", json=body, stream=stream,
                                              timeout=timeout)
        if stream:
            return AsyncStream(response, ChatCompletionChunk)
        return ChatCompletion.model_validate(response.json())


class _Video:
    def __init__(self, client):
        self.chat = _VideoChat(client)


class _AsyncVideo:
    def __init__(self, client):
        self.chat = _AsyncVideoChat(client)


class _Chat:
    def __init__(self, client):
        self.completions = _Completions(client)


class _AsyncChat:
    def __init__(self, client):
        self.completions = _AsyncCompletions(client)


class _Models:
    def __init__(self, client: Client):
        self._client = client

    def list(self) -> ModelList:
        return ModelList.model_validate(self._client.request("GET", "/v1/models").json())


class _AsyncModels:
    def __init__(self, client: AsyncClient):
        self._client = client

    async def list(self) -> ModelList:
        return ModelList.model_validate((await self._client.request("GET", "/v1/models")).json())
