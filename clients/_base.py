"""What the sync and async clients share: configuration, request bodies, uploads, retry policy,
and server-sent-event parsing."""

from __future__ import annotations

import email.utils
import io
import json
import os
import random
import time
from collections.abc import Callable
from typing import IO, Any, Union

import httpx

from ._errors import APIConnectionError, APIError, APIStatusError

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
RETRY_STATUSES = {408, 409, 429}

VideoInput = Union[str, "os.PathLike[str]", bytes, IO[bytes]]


def resolve_config(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    base = (base_url or os.environ.get("AVCHAT_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return base, api_key if api_key is not None else os.environ.get("AVCHAT_API_KEY")


def headers(api_key: str | None, default_headers: dict[str, str] | None) -> dict[str, str]:
    h = {"Accept": "application/json", "User-Agent": "avchat-python/0.1"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    h.update(default_headers or {})
    return h


def is_video_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("vid-") and not os.path.exists(value)


class Upload:
    """A video (or image) to send. Each attempt gets a fresh stream from the start: a path is
    reopened, a file object is rewound, bytes are resent. Paths and file objects stream from disk."""

    def __init__(self, video: VideoInput, field: str = "video"):
        self.video, self.field = video, field
        self._start = video.tell() if hasattr(video, "read") and hasattr(video, "tell") else None
        if isinstance(video, (str, os.PathLike)) and not os.path.isfile(video):
            raise FileNotFoundError(f"no such video file: {video}")

    @property
    def name(self) -> str:
        if isinstance(self.video, (str, os.PathLike)):
            return os.path.basename(os.fspath(self.video))
        return os.path.basename(getattr(self.video, "name", "") or "") or "video"

    def open(self) -> tuple[tuple[str, Any, str], Callable[[], None]]:
        v = self.video
        if isinstance(v, (str, os.PathLike)):
            f = open(v, "rb")  # noqa: SIM115 - closed by the returned callback
            return (self.name, f, "application/octet-stream"), f.close
        if isinstance(v, (bytes, bytearray, memoryview)):
            return (self.name, io.BytesIO(bytes(v)), "application/octet-stream"), lambda: None
        if self._start is not None:
            v.seek(self._start)
        elif getattr(self, "_used", False):
            raise APIError("cannot resend a video from a stream that cannot seek; pass a path or a seekable file")
        self._used = True
        return (self.name, v, "application/octet-stream"), lambda: None


def video_form(
    *,
    video_id=None,
    uuid=None,
    messages=None,
    prompt=None,
    stream=False,
    input_modalities=None,
    max_tokens=None,
    temperature=None,
    top_p=None,
    seed=None,
    stop=None,
    stream_options=None,
    start=None,
    end=None,
    max_audio_windows=None,
) -> dict[str, str]:
    """The form fields of ``POST /v1/video/chat`` (the file goes separately)."""
    if messages is not None and prompt is not None:
        raise ValueError("pass messages or prompt, not both")
    if messages is None and prompt is None:
        raise ValueError("pass messages=[...] or prompt='...'")
    form: dict[str, str] = {}
    if messages is not None:
        form["messages"] = json.dumps(list(messages))
    if stream:
        form["stream"] = "true"
    if stream_options:
        form["stream_options"] = json.dumps(stream_options)
    if input_modalities is not None:
        form["input_modalities"] = ",".join(
            [input_modalities] if isinstance(input_modalities, str) else input_modalities
        )
    if stop is not None:
        form["stop"] = stop if isinstance(stop, str) else json.dumps(list(stop))
    for key, value in (
        ("video_id", video_id),
        ("uuid", uuid),
        ("prompt", prompt),
        ("max_tokens", max_tokens),
        ("temperature", temperature),
        ("top_p", top_p),
        ("seed", seed),
        ("start", start),
        ("end", end),
        ("max_audio_windows", max_audio_windows),
    ):
        if value is not None:
            form[key] = str(value)
    return form


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def should_retry(error: APIError, response: httpx.Response | None = None) -> bool:
    """Connection errors, 408, 409, 429 and 5xx, unless the server asks for a longer wait than
    the SDK's cap (then the caller is better told at once)."""
    if isinstance(error, APIConnectionError):
        return True
    if isinstance(error, APIStatusError):
        after = retry_after(response)
        if after is not None and after > MAX_RETRY_AFTER:
            return False
        return error.status_code in RETRY_STATUSES or error.status_code >= 500
    return False


def retry_after(response: httpx.Response | None) -> float | None:
    """The server's Retry-After(-Ms), in seconds (a number or an HTTP date), if it sent one."""
    if response is None:
        return None
    value = response.headers.get("retry-after-ms")
    if value and value.replace(".", "", 1).isdigit():
        return float(value) / 1000
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return parsed.timestamp() - time.time()


def retry_delay(attempt: int, response: httpx.Response | None) -> float:
    """Capped exponential backoff with jitter; a server's Retry-After (within the cap) wins."""
    after = retry_after(response)
    if after is not None and 0 <= after <= MAX_RETRY_AFTER:
        return after
    delay = min(INITIAL_RETRY_DELAY * 2**attempt, MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * random.random())


def error_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return response.text or None


def parse_sse(line: str) -> tuple[str, Any] | None:
    """One ``data:`` line -> ("done", None) | ("error", body) | ("data", dict); None to skip."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data:
        return None
    if data == "[DONE]":
        return "done", None
    obj = json.loads(data)
    if isinstance(obj, dict) and "error" in obj:
        return "error", obj
    return "data", obj


def stream_error(body: dict, request: httpx.Request | None) -> APIError:
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    return APIError(f"the stream reported an error: {err.get('message') or body}", request=request, body=body)
