"""The errors a caller can cause in the model package: a media file that cannot be used, a window
that does not fit it, a prompt that does not fit the context, and modalities the model has not
got. Nothing here imports torch, so the service's edge can map them without loading a model.

A media error carries the file (``path``) and what is wrong with it (``reason``) apart: the
command line prints both (``str(exc)``), the service answers with the reason alone, so that a
temp file's name never reaches a client.
"""

from __future__ import annotations

import os


class MediaError(ValueError):
    """The file is not usable media: not a media file, empty, truncated, corrupt, or lacking
    the stream that was asked for. ``reason`` says which."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        super().__init__(reason)
        self.reason, self.path = reason, None if path is None else str(path)

    def __str__(self) -> str:
        return self.reason if self.path is None else f"{self.path}: {self.reason}"


class NotAContainerError(MediaError):
    """The file is a playlist, manifest or script that points at other files, not a video."""


class MediaLimitError(MediaError):
    """The file is over one of the decoding budgets (pixels, packets, duration, memory)."""


class MissingStream(MediaError):
    """The file has none of the streams (audio, video) that were asked for."""


class InvalidWindow(ValueError):
    """A requested start/end does not fit the file (or is not a window at all)."""


class ContextLengthError(ValueError):
    """The prompt (media tokens included) plus the tokens to generate exceed the LLM's context.
    ``at_least`` marks a count bounded from below (text refused before it was tokenized)."""

    def __init__(
        self, needed: int, limit: int, prompt_tokens: int, max_new_tokens: int, at_least: bool = False, media: int = 0
    ):
        self.needed, self.limit, self.over = needed, limit, needed - limit
        some = "at least " if at_least else ""
        fewer = f"send fewer than its {media} media, " if media > 1 else ""
        super().__init__(
            f"the prompt needs {some}{prompt_tokens} tokens (media included) and max_tokens asks for "
            f"{max_new_tokens} more: {some}{needed} in all, {some}{self.over} over the model's context of {limit} "
            f"tokens; {fewer}shorten the conversation or lower max_tokens"
        )


class TooManyMessages(ValueError):
    """A conversation with more messages than could ever fit the context."""
