"""Each chat route's request, read and parsed into a typed :class:`Intake` before any logic runs.

* ``POST /v1/video/chat``: a multipart form (or url-encoded, for a follow-up without a file);
  the file streams to a temp file.
* ``POST /v1/chat/completions``: ``application/json`` only (a browser's cross-site "simple"
  request cannot send that without a preflight); a ``data:`` URL becomes a temp file here,
  while the body's bytes are still counted.

Bodies are bounded one by one (their caps, a minimum rate, a total deadline) and together
(``admission.py``: upload places, the memory budget). Parsing a big body, validating it and
measuring its text run in a worker thread, never on the event loop, and a conversation that
cannot fit the context is refused before anything tokenizes it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from python_multipart.multipart import parse_options_header

from model.errors import TooManyMessages

from .admission import Admission, BodyAccount
from .errors import UploadTooLarge, WrongContentType
from .forms import FILE_FIELDS, parse_form
from .protocol import ChatRequest, parse_completion_request
from .uploads import BodyReader, TempVideo, parse_json, read_form, save_base64, save_data_url

OFF_LOOP_BYTES = 64 * 1024  # bodies above this are parsed in a worker thread


@dataclass
class Saved:
    """The files one medium of a request brought with it: its file (an upload, a ``data:`` URL,
    ``input_audio``'s base64), or its image_url frames sent as ``data:`` URLs (None for a frame
    to fetch or read when the request runs)."""

    file: TempVideo | None = None
    frames: list[TempVideo | None] = field(default_factory=list)

    def remove(self) -> None:
        for f in [self.file, *self.frames]:
            if f is not None:
                f.remove()
        self.file, self.frames = None, []


@dataclass
class Intake:
    """A chat request as the service takes it: the request, and the files its media brought
    (``saved[i]`` belongs to ``chat.media[i]``)."""

    chat: ChatRequest
    saved: list[Saved] = field(default_factory=list)

    def discard(self) -> None:
        for medium in self.saved:
            medium.remove()


async def _off_loop(size: int, fn, *args):
    return await asyncio.to_thread(fn, *args) if size > OFF_LOOP_BYTES else fn(*args)


def declared_length(headers, cap: int, what: str) -> int | None:
    """The body's Content-Length, refused at once when over the cap."""
    value = headers.get("content-length")
    if value is None or not value.isdigit():
        return None
    declared = int(value)
    if declared > cap:
        raise UploadTooLarge(f"the {what} is larger than this service's limit of {cap / 2**20:.0f} MiB")
    return declared


def body_reader(request, settings, cap: int, account: BodyAccount, what: str) -> BodyReader:
    s = settings
    return BodyReader(
        request.receive, cap, s.upload_min_bytes, s.upload_rate_window_s, s.upload_timeout_s, account, what
    )


async def read_video_chat(request, settings, admission: Admission, processor) -> Intake:
    """``POST /v1/video/chat``: the form and its file."""
    s = settings
    cap = s.max_upload_bytes + s.max_form_fields * s.max_field_bytes
    account = BodyAccount(admission, declared_length(request.headers, cap, "upload"))
    try:
        form = await read_form(
            request.headers.get("content-type", ""),
            body_reader(request, s, cap, account, "upload"),
            s.temp_dir,
            s.max_upload_bytes,
            FILE_FIELDS,
            s.max_form_fields,
            s.max_field_bytes,
        )
        try:
            size = sum(len(v) for v in form.fields.values())
            chat = await _off_loop(size, _checked_form, form.fields, form.file_field, processor)
        except BaseException:
            if form.file is not None:
                form.file.remove()
            raise
        return Intake(chat, [Saved(form.file) for _ in chat.media])
    finally:
        account.close()


def _checked_form(fields: dict, file_field: str | None, processor) -> ChatRequest:
    chat = parse_form(fields, file_field)
    processor.check_text_fits(chat.messages, chat.max_tokens or 0)
    return chat


async def read_chat_completion(request, settings, admission: Admission, processor) -> Intake:
    """``POST /v1/chat/completions``: the JSON body, and its video when it came as a data: URL."""
    s = settings
    require_json(request)
    account = BodyAccount(admission, declared_length(request.headers, s.max_json_bytes, "request body"))
    try:
        body = await body_reader(request, s, s.max_json_bytes, account, "request body").read()
        chat = await _off_loop(len(body), _checked_json, body, processor)
        del body
        return await with_media(chat, s, account.keep_place)
    finally:
        account.close()


async def with_media(chat: ChatRequest, settings, keep_place=lambda: None) -> Intake:
    """The request and the files its inline media become (a ``data:`` URL, ``input_audio``'s
    base64, ``data:`` frames), medium by medium; ``keep_place`` hands over the body's upload
    place, which the first file holds until it is removed. URLs to fetch or read stay URLs, for
    when the request runs."""
    s = settings
    intake = Intake(chat)
    try:
        for media in chat.media:
            saved = Saved()
            intake.saved.append(saved)
            if media.kind == "url" and media.value.startswith("data:"):
                saved.file = await asyncio.to_thread(
                    save_data_url, media.value, s.temp_dir, s.max_upload_bytes, media.param, keep_place()
                )
                media.kind, media.value = "file", None  # the URL's bytes are the file now
            elif media.kind == "base64":
                saved.file = await asyncio.to_thread(
                    save_base64, media.value, s.temp_dir, s.max_upload_bytes, media.param, keep_place()
                )
                media.kind, media.value = "file", None
            elif media.kind == "frames":
                for i, url in enumerate(media.frames):
                    if url.startswith("data:"):  # the first holds the body's place (keep_place hands it over once)
                        saved.frames.append(
                            await asyncio.to_thread(
                                save_data_url, url, s.temp_dir, s.max_upload_bytes, f"frame {i + 1}", keep_place()
                            )
                        )
                    else:
                        saved.frames.append(None)  # fetched or read in place when the request runs
    except BaseException:
        intake.discard()
        raise
    return intake


def require_json(request) -> None:
    """JSON routes take only application/json: a cross-site form post cannot reach them unasked."""
    ctype, _ = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"application/json":
        raise WrongContentType("send the body as JSON with Content-Type: application/json", param="content-type")


async def read_small_json(request, settings, admission: Admission, cap: int = 64 * 1024):
    """A small JSON body (an API object, not media), bounded like every body."""
    require_json(request)
    account = BodyAccount(admission, declared_length(request.headers, cap, "request body"))
    try:
        body = await body_reader(request, settings, cap, account, "request body").read()
        return parse_json(body)
    finally:
        account.close()


def _checked_json(body: bytes, processor) -> ChatRequest:
    data = parse_json(body)
    limit = processor.config.context_length
    if isinstance(data, dict) and isinstance(data.get("messages"), list) and len(data["messages"]) > limit:
        raise TooManyMessages(f"the conversation has {len(data['messages'])} messages; at most {limit} can fit")
    chat = parse_completion_request(data)
    processor.check_text_fits(chat.messages, chat.max_tokens or 0)
    return chat
