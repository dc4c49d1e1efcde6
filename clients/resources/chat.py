"""``client.chat.completions``: OpenAI Chat Completions with the video in a content part."""

from __future__ import annotations

import base64
import mimetypes
import os

from .._base import drop_none
from .._streaming import AsyncStream, Stream
from .._types import ChatCompletion, ChatCompletionChunk


def _data_url(path: str | os.PathLike, fallback: str) -> str:
    mime = mimetypes.guess_type(os.fspath(path))[0] or fallback
    with open(path, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode()}"


def video_url_part(
    path: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    uuid: str | None = None,
    start: float | None = None,
    end: float | None = None,
) -> dict:
    """A ``video_url`` content part: a local file (sent as a data: URL) or a ``url``; ``uuid``
    names it for reuse, and alone (no path, no url) reuses the video named so earlier."""
    part: dict = {"type": "video_url"}
    if path is not None or url is not None:
        part["video_url"] = drop_none({"url": url or _data_url(path, "video/mp4"), "start": start, "end": end})
    if uuid is not None:
        part["uuid"] = uuid
    return part


def image_url_part(path: str | os.PathLike | None = None, *, url: str | None = None, uuid: str | None = None) -> dict:
    """An ``image_url`` content part (read as a one-frame video)."""
    part: dict = {"type": "image_url"}
    if path is not None or url is not None:
        part["image_url"] = {"url": url or _data_url(path, "image/png")}
    if uuid is not None:
        part["uuid"] = uuid
    return part


def frame_parts(paths) -> list[dict]:
    """Still images as the sampled frames of one video, in order: one ``image_url`` part each
    (as evaluation harnesses send a video; at most 100 frames)."""
    return [image_url_part(p) for p in paths]


def input_audio_part(path: str | os.PathLike, format: str | None = None) -> dict:
    """OpenAI's ``input_audio`` part: an audio file inline (``format`` from its name by default)."""
    fmt = format or os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "wav"
    with open(path, "rb") as f:
        return {"type": "input_audio", "input_audio": {"data": base64.b64encode(f.read()).decode(), "format": fmt}}


def audio_url_part(
    path: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    start: float | None = None,
    end: float | None = None,
) -> dict:
    """An ``audio_url`` part: a local file (sent as a data: URL) or a ``url``; heard only."""
    return {
        "type": "audio_url",
        "audio_url": drop_none({"url": url or _data_url(path, "audio/wav"), "start": start, "end": end}),
    }


def user_message(*content: str | dict) -> dict:
    """A user message of text and media parts, in order; each medium gets its own block of the
    prompt: ``user_message("Which is louder?", video_url_part("a.mp4"), input_audio_part("b.wav"))``."""
    parts = [{"type": "text", "text": c} if isinstance(c, str) else c for c in content]
    return {"role": "user", "content": parts}


def reused_parts(completion) -> list[dict]:
    """One ``uuid`` part per medium of an answer (its ``media.parts``' ids), in order: a follow-up
    that sends these instead of the files asks about the same media without uploading them."""
    media = completion.media
    return [{"type": "video_url", "uuid": p.video_id} for p in (media.parts if media is not None else [])]


def _body(
    messages, model, stream, max_tokens, temperature, top_p, seed, stop, stream_options, input_modalities, video_id
) -> dict:
    return drop_none(
        {
            "model": model,
            "messages": list(messages),
            "stream": stream or None,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "stop": stop,
            "stream_options": stream_options,
            "input_modalities": input_modalities,
            "video_id": video_id,
        }
    )


class Completions:
    def __init__(self, client):
        self._client = client

    def create(
        self,
        *,
        messages: list[dict],
        model: str | None = None,
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stream_options: dict | None = None,
        input_modalities: list[str] | None = None,
        video_id: str | None = None,
        timeout=None,
    ):
        """OpenAI Chat Completions; put the video in a message as ``video_url_part(path)``."""
        body = _body(
            messages,
            model,
            stream,
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            stream_options,
            input_modalities,
            video_id,
        )
        response = self._client.request("POST", "/v1/chat/completions", json=body, stream=stream, timeout=timeout)
        if stream:
            return Stream(response, ChatCompletionChunk)
        return ChatCompletion.model_validate(response.json())


class AsyncCompletions:
    def __init__(self, client):
        self._client = client

    async def create(
        self,
        *,
        messages: list[dict],
        model: str | None = None,
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stream_options: dict | None = None,
        input_modalities: list[str] | None = None,
        video_id: str | None = None,
        timeout=None,
    ):
        body = _body(
            messages,
            model,
            stream,
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            stream_options,
            input_modalities,
            video_id,
        )
        response = await self._client.request("POST", "/v1/chat/completions", json=body, stream=stream, timeout=timeout)
        if stream:
            return AsyncStream(response, ChatCompletionChunk)
        return ChatCompletion.model_validate(response.json())


class Chat:
    def __init__(self, client):
        self.completions = Completions(client)


class AsyncChat:
    def __init__(self, client):
        self.completions = AsyncCompletions(client)
