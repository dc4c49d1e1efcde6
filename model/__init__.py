"""The audio-visual chat model (SigLIP + Whisper + Phi-2), its processor, the media pipeline and
the presets. Names load on first use, so ``import model.media`` does not import torch."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AVChatConfig": "config",
    "AVChatModel": "modeling",
    "AVChatProcessor": "processor",
    "ContextLengthError": "errors",
    "InvalidWindow": "errors",
    "MediaError": "errors",
    "MediaInfo": "media",
    "MediaLimitError": "errors",
    "MediaLimits": "media",
    "MissingStream": "errors",
    "NotAContainerError": "errors",
    "Span": "media",
    "Window": "media",
    "EncoderFeatures": "pipeline",
    "Media": "pipeline",
    "MediaEmbeddings": "pipeline",
    "MediaReport": "pipeline",
    "MediaTensors": "pipeline",
    "Prompt": "pipeline",
    "decode": "pipeline",
    "encode": "pipeline",
    "preprocess": "pipeline",
    "project": "pipeline",
    "prompt": "pipeline",
    "prompt_embeds": "pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'model' has no attribute {name!r}")
