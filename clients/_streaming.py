"""Server-sent event streams of typed chunks, sync and async (openai-python's ``Stream``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Generic, TypeVar

import httpx

from . import _base
from ._errors import APIError, transport_error

T = TypeVar("T")
_DONE = object()


class _ChunkParser:
    """Server-sent lines -> typed chunks; raises on an error event; collects the answer's text."""

    def __init__(self, cast, request: httpx.Request):
        self.cast, self.request = cast, request
        self.text: list[str] = []
        self.video_id: str | None = None
        self.done = False

    def feed(self, line: str):
        event = _base.parse_sse(line)
        if event is None:
            return None
        kind, body = event
        if kind == "done":
            self.done = True
            return _DONE
        if kind == "error":
            raise _base.stream_error(body, self.request)
        chunk = self.cast.model_validate(body)
        self.video_id = self.video_id or getattr(chunk, "video_id", None)
        self.text.extend(c.delta.content or "" for c in getattr(chunk, "choices", []))
        return chunk


class Stream(Generic[T]):
    """Server-sent chunks as typed objects. Iterate it; use it as a context manager, or leave it
    early: the connection is closed either way. After the last chunk, ``text`` is the whole
    answer and ``video_id`` the video's id."""

    def __init__(self, response: httpx.Response, cast: type[T]):
        self.response = response
        self._parser = _ChunkParser(cast, response.request)
        self._iterator: Iterator[T] | None = None
        self.on_complete: Callable[[Stream[T]], None] | None = None  # called once the answer has all arrived

    @property
    def text(self) -> str:
        return "".join(self._parser.text)

    @property
    def video_id(self) -> str | None:
        return self._parser.video_id

    @property
    def completed(self) -> bool:
        """Whether the stream reached its end (``data: [DONE]``)."""
        return self._parser.done

    def _iter(self) -> Iterator[T]:
        try:
            for line in self.response.iter_lines():
                chunk = self._parser.feed(line)
                if chunk is _DONE:
                    self._on_complete()
                    return
                if chunk is not None:
                    yield chunk
        except httpx.TransportError as exc:
            raise transport_error(exc, self.response.request) from exc
        finally:
            self.response.close()

    def _on_complete(self) -> None:
        if self.on_complete is not None:
            self.on_complete(self)

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
    """The async twin of :class:`Stream`."""

    def __init__(self, response: httpx.Response, cast: type[T]):
        self.response = response
        self._parser = _ChunkParser(cast, response.request)
        self._iterator = self._iter()
        self.on_complete: Callable[[AsyncStream[T]], None] | None = None

    text = Stream.text
    video_id = Stream.video_id
    completed = Stream.completed

    async def _iter(self) -> AsyncIterator[T]:
        try:
            async for line in self.response.aiter_lines():
                chunk = self._parser.feed(line)
                if chunk is _DONE:
                    self._on_complete()
                    return
                if chunk is not None:
                    yield chunk
        except httpx.TransportError as exc:
            raise transport_error(exc, self.response.request) from exc
        finally:
            await self.response.aclose()

    def _on_complete(self) -> None:
        if self.on_complete is not None:
            self.on_complete(self)

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


__all__ = ["APIError", "AsyncStream", "Stream"]
