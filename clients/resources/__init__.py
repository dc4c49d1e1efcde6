"""The API's resources, as openai-python lays them out: ``video.chat``, ``chat.completions``, ``models``."""

from .chat import AsyncChat, Chat, image_url_part, video_url_part
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
    "image_url_part",
    "video_url_part",
]
