"""The answers' wire models, in the field order of OpenAI's Chat Completions API
(project-specific fields in marked sections)."""

from __future__ import annotations

import time
import uuid as uuidlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class _Seen(_Response):
    duration_s: float = Field(description="seconds of the file analysed (the start/end window)")
    frames: int = Field(description="frames sampled (or image_url frames sent)")
    audio_s: float = Field(description="seconds of audio the model heard")
    audio_truncated_s: float = Field(
        description="seconds of the window's audio it did not hear: the audio branch takes up to the "
        "checkpoint's max_audio_windows 30 s Whisper windows from `start`, as many as fit the context"
    )


class MediaPart(_Seen):
    """What the model saw and heard of one medium of the conversation."""

    video_id: str = Field(description="this medium's id: send it as a part's uuid to ask about it again")


class MediaInfo(_Seen):
    """What the model saw and heard of the media (an avchat extra): all of them together, and
    each in ``parts``, in the order they came."""

    parts: list[MediaPart] = Field(default_factory=list, description="one entry per medium, in order")


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
