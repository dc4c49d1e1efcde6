"""Receiving request bodies from strangers: at a minimum rate, within limits, into bounded memory.

* :class:`BodyReader` reads the raw ASGI body: it ends a body that brings fewer than
  ``upload_min_bytes`` in a ``upload_rate_window_s`` window or is not all there within
  ``upload_timeout_s`` (408), and one over its cap (413), whether or not Content-Length was
  sent, and notices a client that left (499).
* Multipart bodies are parsed as they arrive: the file part streams to a temp file (hashed on
  the way), fields are counted and capped, part headers are capped at 8 KiB.
* JSON bodies are read whole under their cap and the memory budget, then parsed (nesting too
  deep is a 400).
* Temp files are named after the process that wrote them, so a restart removes what a killed
  process left behind without touching another live worker's files.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .admission import BodyAccount, Upload
from .errors import BadParameter, ClientGone, MalformedBody, StorageFull, UploadTooLarge, UploadTooSlow

MAX_PART_HEADER = 8 * 1024
PREFIX = "avchat-upload-"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


@dataclass
class TempVideo:
    """A media file on local disk; ``remove()`` deletes it unless the service does not own it
    (a file:// path from the allowed local folder), and gives back the upload place it held."""

    path: str
    sha256: str
    size: int
    owned: bool = True
    place: Upload | None = None

    def remove(self) -> None:
        if self.owned:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self.place is not None:
            self.place.release()


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _storage_full() -> StorageFull:
    return StorageFull("the service's temp folder is full; retry later", headers={"Retry-After": "30"})


class TempWriter:
    """Streams bytes to a new temp file, hashing them and enforcing the size limit; a full disk
    is :class:`~service.errors.StorageFull` (507), never a traceback."""

    def __init__(self, temp_dir: str, limit: int, param: str = "video"):
        try:
            fd, self.path = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=".bin", dir=temp_dir)
        except OSError as exc:
            if exc.errno in _FULL:
                raise _storage_full() from None
            raise
        self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size, self.limit, self.param = 0, limit, param

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(
                f"the {self.param} is larger than this service's limit of {_mib(self.limit)}", param=self.param
            )
        try:
            self.file.write(data)
        except OSError as exc:
            if exc.errno in _FULL:
                raise _storage_full() from None
            raise
        self.hash.update(data)

    def done(self, place: Upload | None = None) -> TempVideo:
        try:
            self.file.close()
        except OSError as exc:  # the last buffered bytes did not fit
            self.discard()
            if exc.errno in _FULL:
                raise _storage_full() from None
            raise
        if self.size == 0:
            self.discard()
            raise BadParameter(f"the {self.param} is empty", param=self.param, code="empty_file")
        return TempVideo(self.path, self.hash.hexdigest(), self.size, place=place)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def remove_stale_uploads(temp_dir: str) -> int:
    """Deletes upload files whose writing process is gone (a killed worker's); returns how many."""
    removed = 0
    for path in glob.glob(os.path.join(temp_dir, PREFIX + "*")):
        m = re.match(re.escape(PREFIX) + r"(\d+)-", os.path.basename(path))
        if m is None or _alive(int(m.group(1))) and int(m.group(1)) != os.getpid():
            continue
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BodyReader:
    """The request body as chunks: at a minimum rate, within a total deadline, under a cap, and
    counted to the request's :class:`~service.admission.BodyAccount` (which takes an upload place
    when the body grows, and ends it if that place was given to a faster upload)."""

    STEP_S = 0.5  # longest wait before the reader looks again at its deadline and place

    def __init__(
        self,
        receive,
        cap: int,
        min_bytes: int,
        window_s: float,
        timeout_s: float,
        account: BodyAccount,
        what: str = "request body",
    ):
        self.receive, self.cap, self.min_bytes, self.window_s, self.what = receive, cap, min_bytes, window_s, what
        self.timeout_s, self.deadline = timeout_s, time.monotonic() + timeout_s
        self.account = account
        self.total = 0

    async def chunks(self):
        window_start, window_bytes = time.monotonic(), 0
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                raise UploadTooSlow(
                    f"the {self.what} took longer than {self.timeout_s:g} s to arrive (AVCHAT_UPLOAD_TIMEOUT_S)"
                )
            wait = min(self.window_s - (now - window_start), self.deadline - now, self.STEP_S)
            try:
                message = await asyncio.wait_for(self.receive(), max(wait, 0.001))
            except asyncio.TimeoutError:
                message = None
            self.account.check()
            now = time.monotonic()
            if message is not None:
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                body = message.get("body", b"")
                self.total += len(body)
                if self.total > self.cap:
                    raise UploadTooLarge(f"the {self.what} is larger than this service's limit of {_mib(self.cap)}")
                self.account.received(len(body), self.total)
                window_bytes += len(body)
            if now - window_start >= self.window_s:
                if window_bytes < self.min_bytes and (message is None or message.get("more_body")):
                    raise UploadTooSlow(
                        f"the {self.what} arrived slower than {self.min_bytes} bytes per "
                        f"{self.window_s:g} s; send it faster or in one piece"
                    )
                window_start, window_bytes = now, 0
            if message is None:
                continue
            if body:
                yield body
            if not message.get("more_body", False):
                self.account.finished_receiving()
                return

    async def read(self) -> bytes:
        """The whole body, its bytes held in the request's memory budget."""
        parts = []
        async for chunk in self.chunks():
            self.account.hold(len(chunk))
            parts.append(chunk)
        return b"".join(parts)


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    file: TempVideo | None = None
    file_field: str | None = None
    file_name: str | None = None  # as the client named it (Content-Disposition's filename)


async def read_form(
    content_type: str,
    reader: BodyReader,
    temp_dir: str,
    file_limit: int,
    file_fields: tuple[str, ...],
    max_fields: int,
    max_field_bytes: int,
) -> Form:
    """A multipart (or url-encoded) form: at most one file, which goes to a temp file (and keeps
    the upload place its body took)."""
    ctype, params = parse_options_header(content_type)
    if ctype == b"application/x-www-form-urlencoded":  # no file: a follow-up by video_id
        from urllib.parse import parse_qsl

        body = await reader.read()
        try:
            pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=max_fields)
        except ValueError:
            raise BadParameter(f"the form has more than {max_fields} fields", code="too_many_fields") from None
        return Form(fields=_bounded(pairs, max_fields, max_field_bytes))
    if ctype != b"multipart/form-data":
        raise MalformedBody("send the request as multipart/form-data (a `video` file and form fields)")
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 200:
        raise MalformedBody("the multipart body needs a boundary (1 to 200 characters) in its Content-Type")
    parser = _FormParser(boundary, temp_dir, file_limit, file_fields, max_fields, max_field_bytes, reader.account)
    try:
        async for chunk in reader.chunks():
            parser.write(chunk)
        return parser.finish()
    except BaseException:
        parser.discard()
        raise


def _bounded(pairs, max_fields: int, max_field_bytes: int) -> dict[str, str]:
    if len(pairs) > max_fields:
        raise BadParameter(f"the form has more than {max_fields} fields", code="too_many_fields")
    for name, value in pairs:
        if len(value.encode()) > max_field_bytes:
            raise BadParameter(f"form field {name!r} is longer than {_mib(max_field_bytes)}", param=name)
    return dict(pairs)


class _FormParser:
    def __init__(
        self,
        boundary: bytes,
        temp_dir: str,
        file_limit: int,
        file_fields: tuple[str, ...],
        max_fields: int,
        max_field_bytes: int,
        account: BodyAccount,
    ):
        self.temp_dir, self.file_limit, self.file_fields = temp_dir, file_limit, file_fields
        self.account = account
        self.max_fields, self.max_field_bytes = max_fields, max_field_bytes
        self.form = Form()
        self.writer: TempWriter | None = None
        self.parts = 0
        self.ended = False
        self.header, self.value, self.headers = b"", b"", {}
        self.name: str = ""
        self.buf = bytearray()
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_size=float("inf"),
        )

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:
            raise MalformedBody(f"the multipart body is malformed ({exc})") from None

    def finish(self) -> Form:
        self.parser.finalize()
        if not self.ended:
            raise MalformedBody("the multipart body ends before its closing boundary")
        if self.writer is not None:
            self.form.file = self.writer.done(self.account.keep_place())
            self.writer = None
        return self.form

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.discard()
        if self.form.file is not None:
            self.form.file.remove()

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_fields:
            raise BadParameter(f"the form has more than {self.max_fields} fields", code="too_many_fields")
        self.headers, self.header, self.value = {}, b"", b""

    def _header_field(self, data, start, end) -> None:
        self.header += data[start:end]
        self._check_header()

    def _header_value(self, data, start, end) -> None:
        self.value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self.header) + len(self.value) + sum(len(k) + len(v) for k, v in self.headers.items()) > MAX_PART_HEADER:
            raise MalformedBody(f"a multipart part's headers are longer than {MAX_PART_HEADER} bytes")

    def _header_end(self) -> None:
        self.headers[self.header.decode("latin-1").lower()] = self.value
        self.header, self.value = b"", b""

    def _headers_finished(self) -> None:
        _, disp = parse_options_header(self.headers.get("content-disposition", b""))
        self.name = disp.get(b"name", b"").decode("utf-8", "replace")
        self.buf = bytearray()
        if self.name in self.file_fields:
            if self.writer is not None or self.form.file is not None:
                raise BadParameter("send one video or image per request", param=self.name)
            self.account.take_place()  # a file: it holds an upload place until it is removed
            self.writer = TempWriter(self.temp_dir, self.file_limit, self.name)
            self.form.file_field = self.name
            self.form.file_name = disp.get(b"filename", b"").decode("utf-8", "replace")[:256] or None

    def _part_data(self, data, start, end) -> None:
        if self.name in self.file_fields:
            self.writer.write(data[start:end])
            return
        self.account.hold(end - start)
        self.buf += data[start:end]
        if len(self.buf) > self.max_field_bytes:
            raise BadParameter(
                f"form field {self.name!r} is longer than {_mib(self.max_field_bytes)}", param=self.name or None
            )

    def _part_end(self) -> None:
        if self.name and self.name not in self.file_fields:
            self.form.fields[self.name] = bytes(self.buf).decode("utf-8", "replace")

    def _end(self) -> None:
        self.ended = True


def parse_json(body: bytes) -> Any:
    """A parsed JSON body (big ones are parsed in a worker thread: see ``intake.py``)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise MalformedBody("the JSON body is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the body is not valid JSON ({exc})") from None


def save_data_url(url: str, temp_dir: str, limit: int, param: str, place: Upload | None = None) -> TempVideo:
    """``data:video/mp4;base64,...`` -> a temp file (holding ``place`` until it is removed)."""
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise BadParameter("a data: URL must be base64-encoded (data:video/mp4;base64,...)", param=param)
    return save_base64(payload, temp_dir, limit, param, place)


def save_base64(payload: str, temp_dir: str, limit: int, param: str, place: Upload | None = None) -> TempVideo:
    """Base64 media (a data: URL's payload, OpenAI's ``input_audio.data``) -> a temp file."""
    if len(payload) * 3 // 4 > limit:
        raise UploadTooLarge(f"the {param} is larger than this service's limit of {_mib(limit)}", param=param)
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise BadParameter(f"the {param} is not valid base64", param=param) from None
    writer = TempWriter(temp_dir, limit, param)
    try:
        writer.write(data)
    except BaseException:
        writer.discard()
        raise
    return writer.done(place)
