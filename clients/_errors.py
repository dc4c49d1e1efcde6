"""Errors, mirroring openai-python's hierarchy."""

from __future__ import annotations

from typing import Any

import httpx


class AVChatError(Exception):
    """Base of every error this SDK raises."""


class APIError(AVChatError):
    """The API answered with, or streamed, an error."""

    def __init__(self, message: str, *, request: httpx.Request | None = None, body: Any = None):
        super().__init__(message)
        self.message, self.request, self.body = message, request, body
        err = body.get("error", {}) if isinstance(body, dict) else {}
        err = err if isinstance(err, dict) else {}
        self.type: str | None = err.get("type")
        self.code: str | None = err.get("code")
        self.param: str | None = err.get("param")


class APIStatusError(APIError):
    """The API answered with a 4xx or 5xx status."""

    status_code: int

    def __init__(self, message: str, *, response: httpx.Response, body: Any = None):
        super().__init__(message, request=response.request, body=body)
        self.response = response
        self.status_code = response.status_code
        self.request_id: str | None = response.headers.get("x-request-id")


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    status_code = 401


class PermissionDeniedError(APIStatusError):
    status_code = 403


class NotFoundError(APIStatusError):
    status_code = 404


class ConflictError(APIStatusError):
    status_code = 409


class PayloadTooLargeError(APIStatusError):
    status_code = 413


class UnsupportedMediaTypeError(APIStatusError):
    status_code = 415


class UnprocessableEntityError(APIStatusError):
    status_code = 422


class RateLimitError(APIStatusError):
    status_code = 429


class InternalServerError(APIStatusError):
    """Any 5xx."""


class ServiceUnavailableError(InternalServerError):
    status_code = 503


class GatewayTimeoutError(InternalServerError):
    status_code = 504


class APIConnectionError(APIError):
    """The request did not get an answer: connection refused, reset, DNS..."""

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None):
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    def __init__(self, request: httpx.Request | None = None):
        where = f" ({request.url})" if request is not None else ""
        super().__init__(f"Request timed out{where}.", request=request)


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def status_error(response: httpx.Response, body: Any) -> APIStatusError:
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    detail = (
        body.get("error", {}).get("message")
        if isinstance(body, dict) and isinstance(body.get("error"), dict)
        else (body if isinstance(body, str) else None)
    )
    return cls(f"Error code: {response.status_code} - {detail or response.reason_phrase}", response=response, body=body)


def transport_error(exc: httpx.TransportError, request: httpx.Request) -> APIError:
    """A transport failure as the SDK's error, naming the URL it tried."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request)
    where = f" ({request.url})" if request is not None else ""
    return APIConnectionError(f"Connection error{where}: {exc}", request=request)
