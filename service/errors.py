"""Errors a client can cause, raised as plain exceptions where they happen, and the one table at
the edge that turns each into an HTTP status and an OpenAI error body.

Deep code raises domain errors (this module's, and ``model``'s ``MediaError``,
``ContextLengthError``, ...) without knowing about HTTP; :func:`describe` maps any exception
to (status, body, headers), for JSON answers and for errors inside a started stream alike.
"""

from __future__ import annotations

from typing import Any

from model.errors import (
    ContextLengthError,
    InvalidWindow,
    MediaError,
    MediaLimitError,
    NotAContainerError,
    TooManyMessages,
)
from model.modalities import UnknownModality


class ServiceError(Exception):
    """A client-caused problem: the message says what to change; ``param`` names the field."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.message, self.param, self.code, self.headers = message, param, code, headers or {}


class BadParameter(ServiceError):
    """A field has a value the service cannot use."""


class MalformedBody(ServiceError):
    """The body is not well-formed multipart or JSON."""


class InvalidFields(ServiceError):
    """Fields fail validation (wrong type, out of range, unknown)."""


class Unauthorized(ServiceError):
    """No key, or a key the service does not know."""


class UnknownVideo(ServiceError):
    """A video_id or uuid this caller never uploaded (or that has expired)."""


class UploadTooLarge(ServiceError):
    """A body or file over its limit."""


class UploadTooSlow(ServiceError):
    """A body arriving slower than the minimum transfer rate."""


class FetchRefused(ServiceError):
    """A video URL the service will not fetch, or could not."""


class AtCapacity(ServiceError):
    """Every place (generation or upload) is taken."""


class NotReady(ServiceError):
    """The model is still loading, or failed to."""


class RequestTimedOut(ServiceError):
    """The request ran past the request timeout."""


class NotFound(ServiceError):
    """A file or batch this caller never created (another key's are reported so too)."""


class TooManyBatches(ServiceError):
    """A key with as many batches in flight as it may have."""


class WrongContentType(ServiceError):
    """A body in a format the route does not take (JSON routes take only application/json)."""


class HostNotAllowed(ServiceError):
    """A Host header the service does not answer to (DNS rebinding)."""


class StorageFull(ServiceError):
    """The temp folder has no room for the upload."""


class ShuttingDown(ServiceError):
    """The service is stopping and the request could not finish inside the drain."""


class EngineStopped(ServiceError):
    """The generation engine died; the service is restarting."""


class ClientGone(Exception):
    """The client disconnected; the work for it was cancelled."""


# exception type -> (HTTP status, OpenAI error type, default code). The first match wins, so
# subclasses come before their bases.
ERROR_TABLE: list[tuple[type[BaseException], int, str, str | None]] = [
    (BadParameter, 400, "invalid_request_error", None),
    (HostNotAllowed, 400, "invalid_request_error", "invalid_host"),
    (MalformedBody, 400, "invalid_request_error", "malformed_body"),
    (FetchRefused, 400, "invalid_request_error", "fetch_failed"),
    (ContextLengthError, 400, "invalid_request_error", "context_length_exceeded"),
    (TooManyMessages, 400, "invalid_request_error", "context_length_exceeded"),
    (UnknownModality, 400, "invalid_request_error", None),
    (InvalidWindow, 400, "invalid_request_error", "invalid_window"),
    (MediaLimitError, 400, "invalid_request_error", "media_over_limit"),
    (Unauthorized, 401, "authentication_error", "invalid_api_key"),
    (UnknownVideo, 404, "not_found_error", "video_not_found"),
    (NotFound, 404, "not_found_error", None),
    (UploadTooSlow, 408, "timeout_error", "upload_too_slow"),
    (UploadTooLarge, 413, "payload_too_large", "upload_too_large"),
    (WrongContentType, 415, "invalid_request_error", "unsupported_content_type"),
    (NotAContainerError, 415, "unsupported_media_type", "not_a_video"),
    (MediaError, 415, "unsupported_media_type", "invalid_media"),
    (InvalidFields, 422, "invalid_request_error", None),
    (TooManyBatches, 429, "rate_limit_error", "batch_limit"),
    (ClientGone, 499, "client_closed", None),
    (AtCapacity, 503, "overloaded_error", None),
    (NotReady, 503, "service_unavailable", None),
    (ShuttingDown, 503, "service_unavailable", "shutting_down"),
    (EngineStopped, 503, "service_unavailable", "engine_stopped"),
    (RequestTimedOut, 504, "timeout_error", None),
    (StorageFull, 507, "server_error", "insufficient_storage"),
]
_PARAMS = {
    ContextLengthError: "max_tokens",
    TooManyMessages: "messages",
    UnknownModality: "input_modalities",
    InvalidWindow: "start",
    MediaError: "video",
}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object; every error the service sends, JSON or in a stream, is one."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def describe(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception; unexpected ones are a 500 that hides the text
    (the log has it)."""
    for kind, status, type_, code in ERROR_TABLE:
        if isinstance(exc, kind):
            if isinstance(exc, ServiceError):
                return status, error_body(exc.message, type_, exc.param, exc.code or code), exc.headers
            if isinstance(exc, ClientGone):
                message = "client closed the request"
            elif isinstance(exc, MediaError):  # the reason alone: the file is the service's temp file
                message = exc.reason
            else:
                message = str(exc)
            param = next((p for k, p in _PARAMS.items() if isinstance(exc, k)), None)
            return status, error_body(message, type_, param, code), {}
    return 500, error_body("internal error; see the service log", "server_error"), {}
