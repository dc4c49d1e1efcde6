"""The request of ``POST /v1/chat/completions`` (JSON), in the field order of OpenAI's Chat
Completions API (project-specific fields in marked sections; the answers are
``responses.py``'s). It, and the
multipart form of ``POST /v1/video/chat`` (``forms.py``), each become one :class:`ChatRequest`,
whose ``to_sampling_params()`` applies the checkpoint's generation defaults under the request's
values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model import modalities
from model.media import MAX_SECONDS, Window

from .engine import SamplingParams
from .errors import BadParameter, InvalidFields

MAX_FRAMES = 100  # image_url frames of one video: the frames the model samples from a file
MAX_MEDIA = 8  # media per conversation (a video's frames count as one); the context bounds it too

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_NAME_CHARS = 256  # a uuid or video_id: names, not payloads
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64, as OpenAI's seed
Start = Annotated[float | None, Field(None, ge=0.0, le=MAX_SECONDS, description="analyse from this second")]
End = Annotated[float | None, Field(None, gt=0.0, le=MAX_SECONDS, description="analyse up to this second")]
Name = Annotated[str | None, Field(None, max_length=MAX_NAME_CHARS)]

# -- the request, whichever route it came by --------------------------------------------------------


@dataclass
class MediaRef:
    """One medium of a request: an uploaded file, a URL (data:, http(s), file://), base64
    (``input_audio``), image_url frames, or an earlier upload by ``video_id`` or ``uuid``."""

    kind: Literal["upload", "url", "base64", "frames", "file", "video_id", "uuid"]
    param: str  # the field it came in, for messages
    value: str | None = None  # the URL, base64 data (input_audio), video_id or uuid
    alias: str | None = None  # a uuid to register for this media
    frames: list[str] | None = None  # kind "frames": each frame's URL, in order
    message: int | None = None  # the user message it came in (None: the first)
    window: Window | None = None  # the span of the file to analyse
    modalities: list[str] | None = None  # its streams to use (None: the request's input_modalities)


@dataclass
class ChatRequest:
    messages: list[dict]
    media: list[MediaRef]  # in conversation order; each gets its own block of tokens
    input_modalities: list[str] | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: list[str]
    ignore_eos: bool = False
    max_audio_windows: int | None = None

    def to_sampling_params(self, defaults: dict[str, Any], default_max_tokens: int) -> SamplingParams:
        """The request's values over the checkpoint's generation defaults (as vLLM does)."""

        def pick(value, key, fallback):
            return value if value is not None else defaults.get(key, fallback)

        return SamplingParams(
            max_tokens=pick(self.max_tokens, "max_tokens", default_max_tokens),
            temperature=pick(self.temperature, "temperature", 1.0),
            top_p=pick(self.top_p, "top_p", 1.0),
            seed=self.seed,
            stop=self.stop,
            ignore_eos=self.ignore_eos,
        )


def check_stop(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadParameter(f"stop takes at most {MAX_STOP_SEQUENCES} sequences", param="stop")
    for s in stops:
        if not isinstance(s, str) or not 0 < len(s) <= MAX_STOP_CHARS:
            raise BadParameter(f"each stop sequence is a string of 1 to {MAX_STOP_CHARS} characters", param="stop")
    return stops


class SamplingFields(BaseModel):
    """Sampling fields, validated the same way on both routes."""

    model_config = ConfigDict(extra="forbid")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    ignore_eos: bool = False
    max_audio_windows: int | None = Field(None, ge=1, le=64)
    start: Start = None
    end: End = None


def _message(err: dict) -> str:
    """pydantic's message without its "Value error, " prefix (our validators' own sentences)."""
    msg = err["msg"]
    return msg.removeprefix("Value error, ") if err.get("type") == "value_error" else msg


def validate(model: type[BaseModel], data: dict) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidFields(f"{where}: {_message(err)}", param=where) from None


# -- POST /v1/chat/completions (JSON) ---------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class MediaURL(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str | None = None
    # -- avchat extras --
    start: Start = None
    end: End = None


class VideoURLPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["video_url"]
    video_url: MediaURL | None = None
    uuid: Name = Field(None, description="names this video for reuse; alone, reuses it (vLLM's convention)")


class ImageURLPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: MediaURL | None = None
    uuid: Name = None


AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "opus", "m4a", "aac", "webm")


class InputAudio(BaseModel):
    data: str = Field(description="the audio file, base64-encoded")
    format: str = Field(description=f"one of {', '.join(AUDIO_FORMATS)} (the content decides; this must be one)")

    @field_validator("format")
    @classmethod
    def _known(cls, value: str) -> str:
        if value.lower() not in AUDIO_FORMATS:
            raise ValueError(f"takes {', '.join(AUDIO_FORMATS)}")
        return value.lower()


class InputAudioPart(BaseModel):
    """OpenAI's audio input: the file inline."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURLPart(BaseModel):
    """An audio file by URL (as lmms-eval and vLLM send it): data:, allowed http(s), file://."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["audio_url"]
    audio_url: MediaURL


MediaPart = VideoURLPart | ImageURLPart | InputAudioPart | AudioURLPart


class RequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart | MediaPart] | None = None


PART_TYPES: dict[str, type[BaseModel]] = {
    "text": TextPart,
    "video_url": VideoURLPart,
    "image_url": ImageURLPart,
    "input_audio": InputAudioPart,
    "audio_url": AudioURLPart,
}


def check_parts(messages: Any, kinds: dict[str, type[BaseModel]]) -> None:
    """Content parts checked one by one by their ``type``, so that an error names the part (its
    ``param`` points at it) and, for a type not taken here, lists the ones that are."""
    if not isinstance(messages, list):
        return  # the model's own validation says what is wrong
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            where = f"messages.{i}.content.{j}"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in kinds:
                raise BadParameter(
                    f"{where}: a content part of type {kind!r} is not taken here; send {', '.join(kinds)} parts",
                    param=f"{where}.type",
                    code="unsupported_content_part",
                )
            try:
                kinds[kind].model_validate(part)
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join([where, *(str(p) for p in err["loc"])])
                raise InvalidFields(f"{loc}: {_message(err)}", param=loc) from None


class FormMessage(BaseModel):
    """A message of the form route's ``messages`` field: text only (the file is the form's)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None


class _FormMessages(BaseModel):
    messages: list[FormMessage]


def form_messages(value: Any) -> list[dict]:
    """The form's ``messages`` (parsed JSON), validated as the JSON route's text messages are."""
    check_parts(value, {"text": TextPart})
    messages = validate(_FormMessages, {"messages": value}).messages
    return [_plain(m.role, m.content) for m in messages]


def _plain(role: str, content) -> dict:
    """A message as the processor takes it: a role and its text."""
    role = "system" if role == "developer" else role
    if isinstance(content, list):
        return {"role": role, "content": "\n".join(p.text for p in content if isinstance(p, TextPart))}
    return {"role": role, "content": content or ""}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI Chat Completions; media arrive as content parts of user messages: ``video_url`` and
    ``image_url`` (a data: URL, an http(s) URL from an allowed origin, a file:// URL under the
    allowed local folder, or a ``uuid`` named earlier), consecutive ``image_url`` parts as one
    video's frames, ``input_audio`` and ``audio_url`` (heard only). Up to ``MAX_MEDIA`` media,
    each its own block of tokens, in order."""

    model_config = ConfigDict(extra="ignore")
    messages: list[RequestMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    modalities: list[str] | None = Field(None, description='output types, as in OpenAI\'s API: only ["text"]')
    # -- avchat extras --
    input_modalities: list[str] | None = Field(None, description="streams of the video to use; default both")
    video_id: Name = Field(None, description="a video_id from an earlier answer instead of a video_url")
    start: Start = Field(None, description="analyse from this second (also a field of video_url)")
    end: End = None
    ignore_eos: bool = Field(False, description="generate max_tokens whatever (vLLM's extra; for benchmarks)")
    max_audio_windows: int | None = Field(
        None, ge=1, le=64, description="hear at most this many 30 s audio windows (default: all that fit)"
    )

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, value):
        if value is not None and value != ["text"]:
            raise ValueError(
                'this model answers in text: modalities must be ["text"] (choose the video\'s '
                "streams with input_modalities)"
            )
        return value

    def to_chat_request(self) -> ChatRequest:
        messages = [_plain(m.role, m.content) for m in self.messages]
        chosen = None if self.input_modalities is None else modalities.check(self.input_modalities, "input_modalities")
        media = [ref for i, m in enumerate(self.messages) for ref in _media_of(i, m, chosen)]
        if len(media) > MAX_MEDIA:
            raise BadParameter(
                f"{len(media)} media in one conversation; at most {MAX_MEDIA} are taken (a video's image_url "
                "frames count as one)",
                param="messages",
                code="too_many_media",
            )
        window = Window.of(self.start, self.end)
        if self.video_id:
            if media:
                raise BadParameter("send either a video_url or a video_id, not both", param="video_id")
            media = [MediaRef("video_id", "video_id", self.video_id)]
        if window is not None:
            if len(media) > 1:
                raise BadParameter(
                    "with several media, give start and end in each video_url or audio_url part", param="start"
                )
            if media and media[0].kind in ("video_id", "uuid"):
                raise BadParameter("start and end apply when the video itself is sent", param="start")
            if media and media[0].kind == "frames":
                raise BadParameter("start and end apply to a video file, not to frames", param="start")
            if media and media[0].window is None:
                media[0].window = window
        return ChatRequest(
            messages=messages,
            media=media,
            input_modalities=chosen,
            stream=self.stream,
            include_usage=bool(self.stream_options and self.stream_options.include_usage),
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=check_stop(self.stop),
            ignore_eos=self.ignore_eos,
            max_audio_windows=self.max_audio_windows,
        )


def _media_of(i: int, message: RequestMessage, chosen: list[str] | None) -> list[MediaRef]:
    """The media of message ``i``, in order: each part one medium, except that a run of two or
    more ``image_url`` parts with URLs (nothing between them) is one video's frames."""
    if not isinstance(message.content, list):
        return []
    out: list[MediaRef] = []
    run: list[ImageURLPart] = []
    for part in [*message.content, None]:
        if isinstance(part, ImageURLPart) and part.image_url is not None and part.image_url.url:
            run.append(part)
            continue
        if run:
            out.append(_frames(run, i) if len(run) > 1 else _one(run[0], i, chosen))
            run = []
        if part is not None and not isinstance(part, TextPart):
            out.append(_one(part, i, chosen))
    if out and message.role != "user":
        raise BadParameter(
            f"messages.{i}: media go in user messages, not in a {message.role} message", param=f"messages.{i}"
        )
    return out


def _one(part: MediaPart, i: int, chosen: list[str] | None) -> MediaRef:
    """One medium part: a video or image by URL or uuid, or an audio part."""
    if isinstance(part, InputAudioPart | AudioURLPart):
        return _audio(part, i, chosen)
    kind = "video_url" if isinstance(part, VideoURLPart) else "image_url"
    ref = part.video_url if kind == "video_url" else part.image_url
    if ref is not None and ref.url:
        return MediaRef("url", kind, ref.url, alias=part.uuid, message=i, window=Window.of(ref.start, ref.end))
    if part.uuid:
        if ref is not None and (ref.start is not None or ref.end is not None):
            raise BadParameter("start and end apply when the video itself is sent", param=kind)
        return MediaRef("uuid", "uuid", part.uuid, message=i)
    raise BadParameter(f"a {kind} part needs a url or a uuid", param=kind)


def _frames(parts: list[ImageURLPart], i: int) -> MediaRef:
    """Consecutive image_url parts: the sampled frames of one video, in order."""
    if len(parts) > MAX_FRAMES:
        raise BadParameter(
            f"{len(parts)} image_url frames; a video takes at most {MAX_FRAMES} (the frames the model samples "
            "from a file): send fewer, or the video itself as a video_url",
            param="messages",
            code="too_many_frames",
        )
    for part in parts:
        if part.image_url.start is not None or part.image_url.end is not None:
            raise BadParameter("start and end apply to a video file, not to frames", param="image_url")
    return MediaRef("frames", "image_url", frames=[p.image_url.url for p in parts], message=i)


def _audio(part: InputAudioPart | AudioURLPart, i: int, chosen: list[str] | None) -> MediaRef:
    """An audio part: heard only (``input_modalities``, if given, must include audio)."""
    if chosen is not None and "audio" not in chosen:
        raise BadParameter(
            'an audio part is heard, not seen: input_modalities must include "audio" (or be left out)',
            param="input_modalities",
        )
    if isinstance(part, InputAudioPart):
        return MediaRef("base64", "input_audio", part.input_audio.data, message=i, modalities=["audio"])
    if not part.audio_url.url:
        raise BadParameter("an audio_url part needs a url", param="audio_url")
    window = Window.of(part.audio_url.start, part.audio_url.end)
    return MediaRef("url", "audio_url", part.audio_url.url, message=i, window=window, modalities=["audio"])


def parse_completion_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidFields("the body must be a JSON object", param=None)
    check_parts(body.get("messages"), PART_TYPES)
    return validate(ChatCompletionRequest, body).to_chat_request()
