"""``Client`` and ``AsyncClient``: the sync and async twins, openai-python style."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from . import _base
from ._base import Upload
from ._errors import APIError, status_error, transport_error
from .resources import AsyncChat, AsyncModels, AsyncVideo, Chat, Models, Video


class _Common:
    def __init__(self, *, base_url, api_key, timeout, max_retries, default_headers):
        self.base_url, self.api_key = _base.resolve_config(base_url, api_key)
        self.timeout = timeout if timeout is not None else _base.DEFAULT_TIMEOUT
        self.max_retries = _base.DEFAULT_MAX_RETRIES if max_retries is None else max_retries
        self._headers = _base.headers(self.api_key, default_headers)

    def _attempt(
        self, method: str, path: str, *, json, data, upload: Upload | None, stream: bool, timeout, headers=None
    ) -> tuple[httpx.Request, Callable[[], None]]:
        """One attempt's request, with the upload opened afresh; call the returned cleanup after."""
        files, cleanup = None, lambda: None
        if upload is not None:
            part, cleanup = upload.open()
            files = {upload.field: part}
        try:
            headers = {**self._headers, **(headers or {})}
            if stream:
                headers["Accept"] = "text/event-stream"
            request = self._http.build_request(
                method,
                self.base_url + path,
                json=json,
                data=data,
                files=files,
                headers=headers,
                timeout=timeout if timeout is not None else self.timeout,
            )
            return request, cleanup
        except BaseException:
            cleanup()
            raise

    def _give_up(self, attempt: int, error: APIError, response: httpx.Response | None) -> bool:
        return attempt >= self.max_retries or not _base.should_retry(error, response)


class Client(_Common):
    """Synchronous client for the avchat video chat API.

    Arguments are keyword-only. ``base_url`` falls back to ``$AVCHAT_BASE_URL`` (then
    ``http://127.0.0.1:8000``), ``api_key`` to ``$AVCHAT_API_KEY``. ``timeout`` is seconds or an
    ``httpx.Timeout``; ``max_retries`` (default 2) applies to connection errors, 408, 409, 429 and
    5xx. Pass ``http_client`` to use your own ``httpx.Client``.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        default_headers: dict[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ):
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        self._http = http_client or httpx.Client()
        self._owns_http = http_client is None
        self.video = Video(self)
        self.chat = Chat(self)
        self.models = Models(self)

    def request(
        self,
        method: str,
        path: str,
        *,
        json=None,
        data=None,
        upload: Upload | None = None,
        stream: bool = False,
        timeout=None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Sends with retries; returns a successful response (open, when streaming)."""
        for attempt in range(self.max_retries + 1):
            request, cleanup = self._attempt(
                method, path, json=json, data=data, upload=upload, stream=stream, timeout=timeout, headers=headers
            )
            response = None
            try:
                try:
                    response = self._http.send(request, stream=True)
                except httpx.TransportError as exc:
                    error: APIError = transport_error(exc, request)
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
            if self._give_up(attempt, error, response):
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

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        default_headers: dict[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ):
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        self._http = http_client or httpx.AsyncClient()
        self._owns_http = http_client is None
        self.video = AsyncVideo(self)
        self.chat = AsyncChat(self)
        self.models = AsyncModels(self)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json=None,
        data=None,
        upload: Upload | None = None,
        stream: bool = False,
        timeout=None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            request, cleanup = self._attempt(
                method, path, json=json, data=data, upload=upload, stream=stream, timeout=timeout, headers=headers
            )
            response = None
            try:
                try:
                    response = await self._http.send(request, stream=True)
                except httpx.TransportError as exc:
                    error: APIError = transport_error(exc, request)
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
            if self._give_up(attempt, error, response):
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
