"""OpenAI-style Python SDK for the avchat video chat API (httpx + pydantic only).

from clients import Client

client = Client(base_url="http://127.0.0.1:8000")
answer = client.video.chat.create(video="clip.mp4", prompt="What do you hear?")
print(answer.choices[0].message.content)
"""

from ._client import AsyncClient, Client
from ._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    AVChatError,
    BadRequestError,
    ConflictError,
    GatewayTimeoutError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)
from ._streaming import AsyncStream, Stream
from ._types import ChatCompletion, ChatCompletionChunk, Model, ModelList, Usage
from .resources import (
    AsyncConversation,
    Conversation,
    audio_url_part,
    frame_parts,
    image_url_part,
    input_audio_part,
    reused_parts,
    user_message,
    video_url_part,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AVChatError",
    "AsyncClient",
    "AsyncConversation",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Client",
    "ConflictError",
    "Conversation",
    "GatewayTimeoutError",
    "InternalServerError",
    "Model",
    "ModelList",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "Stream",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
    "Usage",
    "audio_url_part",
    "frame_parts",
    "image_url_part",
    "input_audio_part",
    "reused_parts",
    "user_message",
    "video_url_part",
]
