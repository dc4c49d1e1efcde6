"""User-facing errors as exceptions; the app turns them into OpenAI error bodies at the edge."""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.param, self.code, self.headers = message, param, code, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(ServiceError):
    status, type = 400, "invalid_request_error"


class Unauthorized(ServiceError):
    status, type = 401, "authentication_error"


class NotFound(ServiceError):
    status, type = 404, "not_found_error"


class PayloadTooLarge(ServiceError):
    status, type = 413, "payload_too_large"


class UnsupportedMedia(ServiceError):
    status, type = 415, "unsupported_media_type"


class Unprocessable(ServiceError):
    status, type = 422, "invalid_request_error"


class Overloaded(ServiceError):
    status, type = 503, "overloaded_error"


class NotReady(ServiceError):
    status, type = 503, "service_unavailable"


class Timeout(ServiceError):
    status, type = 504, "timeout_error"


class ClientGone(Exception):
    """The client disconnected; the work for it was cancelled."""
