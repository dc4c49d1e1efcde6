"""The input streams a model can use, and the one check of a list of them. Every caller (the
config, the pipeline, the command line, the service, training) goes through :func:`check`;
nothing here imports torch, so the service's wire models can use it too."""

from __future__ import annotations

from collections.abc import Iterable

MODALITIES = ("audio", "video")


class UnknownModality(ValueError):
    """A modality list that is empty, not a list of names, or names something else."""


def check(value: str | Iterable[str] | None, what: str = "modalities") -> list[str]:
    """A list of modalities from a list or a comma-separated string (``audio,video``,
    ``audio+video``), in the order given, without repeats."""
    if isinstance(value, str):
        value = [m.strip() for m in value.replace("+", ",").split(",") if m.strip()]
    if isinstance(value, dict) or not isinstance(value, Iterable):
        raise UnknownModality(f"{what} takes a list of audio and/or video")
    names = list(value)
    if not names or not all(isinstance(m, str) for m in names):
        raise UnknownModality(f"{what} takes a list of audio and/or video")
    bad = [m for m in names if m not in MODALITIES]
    if bad:
        raise UnknownModality(f"{what} takes audio and/or video, not {', '.join(bad)}")
    return list(dict.fromkeys(names))
