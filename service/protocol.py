"""Wire models, in the field order of OpenAI's Chat Completions API (project-specific fields in
marked sections), and the request of ``POST /v1/chat/completions`` (JSON). It, and the
multipart form of ``POST /v1/video/chat`` (``forms.py``), each become one :class:`ChatRequest`,
whose ``to_sampling_params()`` applies the checkpoint's generation defaults under the request's
values.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.media import Window

from .engine import SamplingParams
from .errors import BadParameter, InvalidFields

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64, as OpenAI's seed
INPUT_MODALITIES = ("audio", "video")

# -- responses ------------------------------------------------------------------------------------


class _Response(BaseModel):
    # Responses always carry every field, defaults included: say so in the schema.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class PromptTokensDetails(_Response):
    cached_tokens: int = 0
    # -- avchat extras --
    audio_tokens: int = Field(0, description="prompt tokens holding the audio features")
    video_tokens: int = Field(0, description="prompt tokens holding the video features")
    text_tokens: int = Field(0, description="prompt tokens of text")


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class MediaInfo(_Response):
    """What the model saw and heard of the video (an avchat extra)."""

    duration_s: float = Field(description="seconds of the file analysed (the start/end window)")
    frames: int = Field(description="frames sampled")
    audio_s: float = Field(description="seconds of audio the model heard")
    audio_truncated_s: float = Field(
        description="seconds of the window's audio it did not hear: the audio branch "
        "takes one 30 s Whisper window from `start`"
    )


class ChatMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class Choice(_Response):
    index: int = 0
    message: ChatMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletion(_Response):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuidlib.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    # -- avchat extras --
    video_id: str | None = Field(None, description="send it back as `video_id` to ask again without uploading")
    media: MediaInfo | None = None


class ChoiceDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Response):
    index: int = 0
    delta: ChoiceDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    # -- avchat extras --
    video_id: str | None = None
    media: MediaInfo | None = Field(None, description="on the last chunk")


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "avchat"
    # -- avchat extras --
    engine: str = Field(description="the generation engine serving it: vllm or transformers")
    max_model_len: int = 2048
    modalities: list[str] = Field(default_factory=list)


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorDetail


# -- the request, whichever route it came by --------------------------------------------------------


@dataclass
class MediaRef:
    """What a request's media is: an uploaded file, a URL (data:, http(s), file://), or an
    earlier upload by ``video_id`` or ``uuid``."""

    kind: Literal["upload", "url", "video_id", "uuid"]
    param: str  # the field it came in, for messages
    value: str | None = None  # the URL, video_id or uuid
    alias: str | None = None  # a uuid to register for this media


@dataclass
class ChatRequest:
    messages: list[dict]
    media: MediaRef | None
    input_modalities: list[str] | None
    window: Window | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: list[str]

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
        )


def check_stop(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadParameter(f"stop takes at most {MAX_STOP_SEQUENCES} sequences", param="stop")
    for s in stops:
        if not isinstance(s, str) or not 0 < len(s) <= MAX_STOP_CHARS:
            raise BadParameter(f"each stop sequence is a string of 1 to {MAX_STOP_CHARS} characters", param="stop")
    return stops


def check_modalities(mods, param: str) -> list[str]:
    if isinstance(mods, str):
        mods = [m.strip() for m in mods.replace("+", ",").split(",") if m.strip()]
    if not isinstance(mods, list) or not mods or not all(isinstance(m, str) for m in mods):
        raise BadParameter(f"{param} takes a list of audio and/or video", param=param)
    bad = [m for m in mods if m not in INPUT_MODALITIES]
    if bad:
        raise BadParameter(f"{param} takes audio and/or video, not {', '.join(bad)}", param=param)
    return mods


def window_of(start, end) -> Window | None:
    if start is None and end is None:
        return None
    return Window(float(start or 0.0), None if end is None else float(end))


class SamplingFields(BaseModel):
    """Sampling fields, validated the same way on both routes."""

    model_config = ConfigDict(extra="forbid")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    start: float | None = Field(None, ge=0.0, le=1e7)
    end: float | None = Field(None, gt=0.0, le=1e7)


def validate(model: type[BaseModel], data: dict) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidFields(f"{where}: {err['msg']}", param=where) from None


# -- POST /v1/chat/completions (JSON) ---------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class MediaURL(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str | None = None
    # -- avchat extras --
    start: float | None = None
    end: float | None = None


class VideoURLPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["video_url"]
    video_url: MediaURL | None = None
    uuid: str | None = Field(None, description="names this video for reuse; alone, reuses it (vLLM's convention)")


class ImageURLPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: MediaURL | None = None
    uuid: str | None = None


class RequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart | VideoURLPart | ImageURLPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI Chat Completions; the video arrives as a ``video_url`` (or ``image_url``) content
    part: a data: URL, an http(s) URL from an allowed origin, a file:// URL under the allowed
    local folder, or a ``uuid`` named earlier."""

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
    video_id: str | None = Field(None, description="a video_id from an earlier answer instead of a video_url")
    start: float | None = Field(None, ge=0.0, description="analyse from this second (also a field of video_url)")
    end: float | None = Field(None, gt=0.0, description="analyse up to this second")

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
        messages, parts = [], []
        for m in self.messages:
            role = "system" if m.role == "developer" else m.role
            if isinstance(m.content, list):
                text = [p.text for p in m.content if isinstance(p, TextPart)]
                parts += [p for p in m.content if not isinstance(p, TextPart)]
                messages.append({"role": role, "content": "\n".join(text)})
            else:
                messages.append({"role": role, "content": m.content or ""})
        if len(parts) > 1:
            raise BadParameter("send one video_url or image_url per conversation", param="messages")
        media, window = None, window_of(self.start, self.end)
        if parts:
            part = parts[0]
            kind = "video_url" if isinstance(part, VideoURLPart) else "image_url"
            ref = part.video_url if kind == "video_url" else part.image_url
            if ref is not None and ref.url:
                media = MediaRef("url", kind, ref.url, alias=part.uuid)
                window = window_of(ref.start, ref.end) or window
            elif part.uuid:
                media = MediaRef("uuid", "uuid", part.uuid)
            else:
                raise BadParameter(f"a {kind} part needs a url or a uuid", param=kind)
        if self.video_id:
            if media is not None:
                raise BadParameter("send either a video_url or a video_id, not both", param="video_id")
            media = MediaRef("video_id", "video_id", self.video_id)
        if window is not None and media is not None and media.kind != "url":
            raise BadParameter("start and end apply when the video itself is sent", param="start")
        if window is not None:
            validate(SamplingFields, {"start": window.start, "end": window.end})
        return ChatRequest(
            messages=messages,
            media=media,
            input_modalities=None
            if self.input_modalities is None
            else check_modalities(self.input_modalities, "input_modalities"),
            window=window,
            stream=self.stream,
            include_usage=bool(self.stream_options and self.stream_options.include_usage),
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=check_stop(self.stop),
        )


def parse_completion_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidFields("the body must be a JSON object", param=None)
    return validate(ChatCompletionRequest, body).to_chat_request()
