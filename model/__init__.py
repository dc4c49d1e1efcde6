"""The audio-visual chat model (SigLIP + Whisper + Phi-2), its processor, media decoding and presets."""

from .config import AVChatConfig
from .media import Media, MediaError, MediaInfo, load_media, probe
from .modeling import AVChatModel
from .processor import AVChatProcessor, ContextLengthError, Sample

__all__ = ["AVChatConfig", "AVChatModel", "AVChatProcessor", "ContextLengthError", "Media", "MediaError",
           "MediaInfo", "Sample", "load_media", "probe"]
