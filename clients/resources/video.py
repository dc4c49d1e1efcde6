"""``client.video.chat``: ask about a video (``POST /v1/video/chat``), and conversations that
upload once and keep the history."""

from __future__ import annotations

import secrets
from typing import Any

from .._base import Upload, VideoInput, is_video_id, video_form
from .._streaming import AsyncStream, Stream
from .._types import ChatCompletion, ChatCompletionChunk


def _request(video, image, video_id, uuid, kwargs) -> tuple[dict[str, str], Upload | None]:
    if video is not None and is_video_id(video):
        video, video_id = None, video
    given = [name for name, v in (("video", video), ("image", image), ("video_id", video_id)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"pass one of video, image and video_id, not {' and '.join(given)}")
    if not given and not uuid:
        raise ValueError("pass video= (a path, bytes or a binary file), image=, or a video_id from an earlier answer")
    upload = Upload(video, "video") if video is not None else Upload(image, "image") if image is not None else None
    if upload is None and uuid and not video_id:
        video_id, uuid = uuid, None  # a name given earlier: the server resolves it like a video_id
    return video_form(video_id=video_id, uuid=uuid if upload is not None else None, **kwargs), upload


AFFINITY = "X-Avchat-Affinity"  # what a router in front of several replicas hashes on


def _affinity(video, video_id, affinity: str | None) -> dict[str, str]:
    """The affinity key: the caller's (a conversation's), else the video_id being asked about."""
    key = affinity or video_id or (video if video is not None and is_video_id(video) else None)
    return {AFFINITY: key} if key else {}


class VideoChat:
    def __init__(self, client):
        self._client = client

    def create(
        self,
        video: VideoInput | None = None,
        *,
        image: VideoInput | None = None,
        video_id: str | None = None,
        uuid: str | None = None,
        messages: list[dict] | None = None,
        prompt: str | None = None,
        stream: bool = False,
        input_modalities: list[str] | str | None = None,
        modalities: list[str] | str | None = None,
        start: float | None = None,
        end: float | None = None,
        max_audio_windows: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stream_options: dict | None = None,
        timeout=None,
        affinity: str | None = None,
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """Ask about a video. ``video`` is a path, bytes, a binary file object or a video_id;
        ``image`` a still image; ``uuid`` names the upload for later requests (or, alone, reuses
        it). ``input_modalities`` (``modalities`` is its older name) picks the streams used;
        ``start``/``end`` the seconds analysed; ``max_audio_windows`` how many 30 s windows of
        sound it may hear at most; ``affinity`` the key a router sends the request on
        by (default: the video_id, when asking about one). Returns a :class:`ChatCompletion`, or
        with ``stream=True`` a ``Stream[ChatCompletionChunk]``."""
        headers = _affinity(video, video_id, affinity)
        form, upload = _request(video, image, video_id, uuid, _options(locals()))
        response = self._client.request(
            "POST", "/v1/video/chat", data=form, upload=upload, stream=stream, timeout=timeout, headers=headers
        )
        if stream:
            return Stream(response, ChatCompletionChunk)
        return ChatCompletion.model_validate(response.json())

    def conversation(self, video: VideoInput, **defaults) -> Conversation:
        """A multi-turn chat about one video, uploaded once (later turns send its video_id)."""
        return Conversation(self, video, **defaults)


class AsyncVideoChat:
    def __init__(self, client):
        self._client = client

    async def create(
        self,
        video: VideoInput | None = None,
        *,
        image: VideoInput | None = None,
        video_id: str | None = None,
        uuid: str | None = None,
        messages: list[dict] | None = None,
        prompt: str | None = None,
        stream: bool = False,
        input_modalities: list[str] | str | None = None,
        modalities: list[str] | str | None = None,
        start: float | None = None,
        end: float | None = None,
        max_audio_windows: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stream_options: dict | None = None,
        timeout=None,
        affinity: str | None = None,
    ):
        headers = _affinity(video, video_id, affinity)
        form, upload = _request(video, image, video_id, uuid, _options(locals()))
        response = await self._client.request(
            "POST", "/v1/video/chat", data=form, upload=upload, stream=stream, timeout=timeout, headers=headers
        )
        if stream:
            return AsyncStream(response, ChatCompletionChunk)
        return ChatCompletion.model_validate(response.json())

    def conversation(self, video: VideoInput, **defaults) -> AsyncConversation:
        return AsyncConversation(self, video, **defaults)


def _options(args: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "messages",
        "prompt",
        "stream",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream_options",
        "start",
        "end",
        "max_audio_windows",
    )
    out = {k: args[k] for k in keys}
    out["input_modalities"] = args["input_modalities"] if args["input_modalities"] is not None else args["modalities"]
    return out


class Conversation:
    """Keeps the history and the video_id: the first question uploads the video, later ones don't.

    chat = client.video.chat.conversation("clip.mp4")
    print(chat.ask("What do you hear?").choices[0].message.content)
    for chunk in chat.ask("And what do you see?", stream=True): ...
    """

    def __init__(self, resource, video: VideoInput, *, system: str | None = None, **defaults):
        self._resource = resource
        self._video = video
        self.video_id: str | None = video if is_video_id(video) else None
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.defaults = defaults
        # Every turn, the first upload included, carries one key: behind a router they all reach
        # the replica that holds the video's features.
        self.affinity = self.video_id or f"conv-{secrets.token_hex(12)}"

    def _args(self, question: str, stream: bool, overrides: dict) -> dict:
        self.messages.append({"role": "user", "content": question})
        args = {**self.defaults, **overrides, "messages": list(self.messages), "stream": stream}
        args.setdefault("affinity", self.affinity)
        if self.video_id:
            args["video_id"] = self.video_id
        else:
            args["video"] = self._video
        return args

    def _answered(self, text: str, video_id: str | None) -> None:
        self.messages.append({"role": "assistant", "content": text})
        self.video_id = self.video_id or video_id

    def ask(self, question: str, *, stream: bool = False, **overrides):
        """The answer (a ChatCompletion), or with ``stream=True`` a closable stream whose
        answer joins the history once it has been read to the end."""
        args = self._args(question, stream, overrides)
        try:
            result = self._resource.create(**args)
        except BaseException:
            self.messages.pop()
            raise
        if stream:
            result.on_complete = lambda s: self._answered(s.text, s.video_id)
            return result
        self._answered(result.choices[0].message.content or "", result.video_id)
        return result


class AsyncConversation(Conversation):
    async def ask(self, question: str, *, stream: bool = False, **overrides):  # type: ignore[override]
        args = self._args(question, stream, overrides)
        try:
            result = await self._resource.create(**args)
        except BaseException:
            self.messages.pop()
            raise
        if stream:
            result.on_complete = lambda s: self._answered(s.text, s.video_id)
            return result
        self._answered(result.choices[0].message.content or "", result.video_id)
        return result


class Video:
    def __init__(self, client):
        self.chat = VideoChat(client)


class AsyncVideo:
    def __init__(self, client):
        self.chat = AsyncVideoChat(client)
