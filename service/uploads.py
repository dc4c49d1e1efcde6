"""Getting a video onto local disk without holding it in memory: multipart uploads parsed as
they stream in, ``data:`` URLs, and http(s) URLs from allowed hosts. Every path counts bytes and
stops at the upload limit; the file is hashed while it is written (the hash is the video_id)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from urllib.parse import urlparse

from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import BadRequest, PayloadTooLarge

DRAIN_LIMIT = 64 * 1024 * 1024  # past the limit, read (and drop) this much so clients see the 413


@dataclass
class TempVideo:
    """A file in the service's temp folder; ``remove()`` is always called by the request."""

    path: str
    sha256: str
    size: int

    @property
    def video_id(self) -> str:
        return "vid-" + self.sha256[:40]

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _Writer:
    def __init__(self, temp_dir: str, limit: int):
        fd, self.path = tempfile.mkstemp(prefix="avchat-", suffix=".upload", dir=temp_dir)
        self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0
        self.limit = limit

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise PayloadTooLarge(f"the video is larger than this service's limit of {_mib(self.limit)}",
                                  param="video", code="upload_too_large")
        self.file.write(data)
        self.hash.update(data)

    def done(self) -> TempVideo:
        self.file.close()
        return TempVideo(self.path, self.hash.hexdigest(), self.size)

    def discard(self) -> None:
        self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


@dataclass
class MultipartForm:
    fields: dict[str, str] = field(default_factory=dict)
    video: TempVideo | None = None


async def read_multipart(request, temp_dir: str, limit: int, file_field: str = "video",
                         field_limit: int = 4 * 1024 * 1024) -> MultipartForm:
    """Parses a multipart body as it arrives: form fields into memory (bounded), the ``video``
    part into a temp file. Past ``limit`` it raises 413 after draining a bounded amount."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype == b"application/x-www-form-urlencoded":  # no file: a follow-up by video_id
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > field_limit:
                raise BadRequest("the form is too long", code="form_too_long")
        from urllib.parse import parse_qsl

        return MultipartForm(fields=dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest("send the request as multipart/form-data (a `video` file and form fields)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + field_limit + DRAIN_LIMIT:
        raise PayloadTooLarge(f"the upload is {_mib(int(declared))}; this service takes videos up to {_mib(limit)}",
                              param="video", code="upload_too_large")

    form = MultipartForm()
    state = {"name": None, "filename": None, "header": b"", "value": b"", "headers": {}, "buf": bytearray()}
    writer: list[_Writer] = []
    errors: list[Exception] = []

    def on_header_field(data, start, end):
        state["header"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["header"].decode("latin-1").lower()] = state["value"]
        state["header"], state["value"] = b"", b""

    def on_headers_finished():
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        state["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        state["filename"] = disp.get(b"filename")
        state["buf"] = bytearray()
        if state["name"] == file_field:
            if writer:
                errors.append(BadRequest("send one video per request", param="video"))
                return
            writer.append(_Writer(temp_dir, limit))

    def on_part_data(data, start, end):
        if errors:
            return
        chunk = data[start:end]
        if state["name"] == file_field:
            try:
                writer[-1].write(chunk)
            except PayloadTooLarge as exc:
                errors.append(exc)
        else:
            state["buf"] += chunk
            if len(state["buf"]) > field_limit:
                errors.append(BadRequest(f"form field {state['name']!r} is too long", param=state["name"]))

    def on_part_end():
        if state["name"] != file_field and state["name"]:
            form.fields[state["name"]] = bytes(state["buf"]).decode("utf-8", "replace")
        state["headers"] = {}

    parser = MultipartParser(params[b"boundary"], {
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end})
    drained = 0
    try:
        async for chunk in request.stream():
            if errors:
                drained += len(chunk)  # keep reading a little so the client gets our answer
                if drained > DRAIN_LIMIT:
                    break
                continue
            parser.write(chunk)
        if errors:
            raise errors[0]
        parser.finalize()
    except BaseException:
        for w in writer:
            w.discard()
        raise
    if writer:
        video = writer[0].done()
        if video.size == 0:
            video.remove()
            raise BadRequest("the uploaded video is empty", param="video", code="empty_file")
        form.video = video
    return form


def save_data_url(url: str, temp_dir: str, limit: int) -> TempVideo:
    """``data:video/mp4;base64,...`` -> a temp file."""
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise BadRequest("a data: URL video must be base64-encoded (data:video/mp4;base64,...)", param="video_url")
    if len(payload) * 3 // 4 > limit:
        raise PayloadTooLarge(f"the video is larger than this service's limit of {_mib(limit)}", param="video_url",
                              code="upload_too_large")
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise BadRequest("the data: URL is not valid base64", param="video_url") from None
    w = _Writer(temp_dir, limit)
    try:
        w.write(data)
    except BaseException:
        w.discard()
        raise
    video = w.done()
    if video.size == 0:
        video.remove()
        raise BadRequest("the video in the data: URL is empty", param="video_url", code="empty_file")
    return video


async def fetch_url(url: str, allowed_hosts: list[str], temp_dir: str, limit: int, timeout: float) -> TempVideo:
    """Downloads an http(s) video from an allow-listed host, streaming to disk."""
    import httpx

    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    if parsed.scheme not in ("http", "https"):
        raise BadRequest("video_url must be a data: URL or an http(s) URL", param="video_url")
    if host not in {h.lower() for h in allowed_hosts}:
        raise BadRequest(f"this service does not fetch videos from {host or 'that address'}; send the video as "
                         "a data: URL (the operator can allow hosts with AVCHAT_ALLOWED_VIDEO_HOSTS)",
                         param="video_url", code="host_not_allowed")
    w = _Writer(temp_dir, limit)
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            async with client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise BadRequest(f"fetching video_url answered HTTP {resp.status_code}", param="video_url")
                async for chunk in resp.aiter_bytes():
                    w.write(chunk)
    except httpx.HTTPError as exc:
        w.discard()
        raise BadRequest(f"could not fetch video_url: {exc}", param="video_url") from None
    except BaseException:
        w.discard()
        raise
    return w.done()
