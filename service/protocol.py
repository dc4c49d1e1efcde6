"""Wire models, in the field order of OpenAI's Chat Completions API. Project-specific fields are
in marked sections."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

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


class ChatMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class Choice(_Response):
    index: int = 0
    message: ChatMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletion(_Response):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    # -- avchat extras --
    video_id: str | None = Field(None, description="send it back as `video_id` to ask again without uploading")


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


# -- requests -------------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class VideoURL(BaseModel):
    url: str


class VideoURLPart(BaseModel):
    type: Literal["video_url"]
    video_url: VideoURL


class RequestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart | VideoURLPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI Chat Completions; the video arrives as a ``video_url`` content part (data: URL, or
    http(s) from an allowed host)."""

    model_config = ConfigDict(extra="ignore")
    messages: list[RequestMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # -- avchat extras --
    modalities: list[Literal["audio", "video"]] | None = Field(
        None, description="which streams of the video to use; default audio and video")
    video_id: str | None = Field(None, description="a video_id from an earlier answer instead of a video_url")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
