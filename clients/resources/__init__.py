"""The API's resources, as openai-python lays them out: ``video.chat``, ``chat.completions``, ``models``."""

from .chat import (
    AsyncChat,
    Chat,
    audio_url_part,
    frame_parts,
    image_url_part,
    input_audio_part,
    reused_parts,
    user_message,
    video_url_part,
)
from .models import AsyncModels, Models
from .video import AsyncConversation, AsyncVideo, Conversation, Video

__all__ = [
    "AsyncChat",
    "AsyncConversation",
    "AsyncModels",
    "AsyncVideo",
    "Chat",
    "Conversation",
    "Models",
    "Video",
    "audio_url_part",
    "frame_parts",
    "image_url_part",
    "input_audio_part",
    "reused_parts",
    "user_message",
    "video_url_part",
]
