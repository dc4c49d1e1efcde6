"""Response types, in the shape of openai-python's (field for field with the service's schema;
a contract test keeps them from drifting)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")  # newer servers may add fields


class PromptTokensDetails(_Model):
    cached_tokens: int = 0
    audio_tokens: int = 0
    video_tokens: int = 0
    text_tokens: int = 0


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class ChatCompletionMessage(_Model):
    role: str = "assistant"
    content: str | None = None


class Choice(_Model):
    index: int = 0
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: str | None = None  # "stop" or "length" here; other OpenAI-compatible servers say more


class MediaPart(_Model):
    duration_s: float
    frames: int
    audio_s: float
    audio_truncated_s: float
    video_id: str


class MediaInfo(_Model):
    duration_s: float
    frames: int
    audio_s: float
    audio_truncated_s: float
    parts: list[MediaPart] = []


class ChatCompletion(_Model):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    video_id: str | None = None
    media: MediaInfo | None = None


class ChoiceDelta(_Model):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Model):
    index: int = 0
    delta: ChoiceDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Model):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    video_id: str | None = None
    media: MediaInfo | None = None


class Model(_Model):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    engine: str
    max_model_len: int = 2048
    modalities: list[str] = []


class ModelList(_Model):
    object: Literal["list"] = "list"
    data: list[Model]
