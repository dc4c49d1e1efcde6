"""Training data: JSON-lines manifests in the LLaVA conversation format, one sample per line::

    {"id": "cv-123", "audio": "clips/123.mp3",
     "conversations": [{"from": "human", "value": "<audio>\\nTranscribe the speech."},
                       {"from": "gpt", "value": "Hello there."}]}

``video`` (a video file), ``audio`` (an audio file, e.g. the wav extracted from the video) and
``image`` (an image, read as a one-frame video) are optional paths, relative to the data root
(the manifest's folder unless ``--data-root`` says otherwise) or absolute. The placeholders in
the text are ignored: the processor places ``<audio>``/``<video>`` itself from what the sample
has and what the run uses.

Each item carries, per stream, either the frozen encoders' features from a feature cache or the
preprocessed raw media (``model.pipeline``'s decode and preprocess, one decode per file for all
the streams wanted from it); the trainer runs the encoders on the raw ones. A sample that
cannot be used (missing or corrupt media, too long for the context) is skipped and counted,
never fatal: the dataset serves the next usable one instead and records the reason in the
run's ``skipped.jsonl``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from model import pipeline
from model.media import MediaError, MissingStream, Window
from model.processor import IGNORE_INDEX, ContextLengthError

from . import jsonl

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MEDIA_KEYS = ("video", "audio", "image")


def read_manifest(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> list[dict]:
    """Reads a manifest; media paths become absolute (relative ones are under the data root)."""
    base = Path(data_root).resolve() if data_root else Path(path).resolve().parent
    rows = []
    for row in jsonl.read(path):
        for key in MEDIA_KEYS:
            if row.get(key) and not os.path.isabs(row[key]):
                row[key] = str(base / row[key])
        rows.append(row)
    return rows


def to_messages(row: dict) -> list[dict]:
    return [{"role": ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]


def media_paths(row: dict, modalities) -> tuple[str | None, str | None]:
    """The files a sample's video and audio come from, for the streams the run uses."""
    video = row.get("video") or row.get("image")
    audio = row.get("audio") or (row.get("video") if row.get("audio_from_video") else None)
    return (video if "video" in modalities else None), (audio if "audio" in modalities else None)


class SkipLog:
    """Counts skipped samples and records why, one JSON line each (each rank of a distributed
    run and each dataloader worker appends to the same file)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.count = 0

    def add(self, row: dict, reason: str) -> None:
        self.count += 1
        if self.path is not None:
            jsonl.append(self.path, [{"id": row.get("id"), "reason": reason}])


@dataclass
class Example:
    """One sample: token ids and labels, and its media by what they hold: ``cached`` the frozen
    encoders' outputs from a feature cache, ``raw`` preprocessed media the trainer still has to
    encode. Each stream is in one of the two, or in neither (the sample or the run has none)."""

    ids: list[int]
    labels: list[int]
    cached: pipeline.EncoderFeatures = field(default_factory=lambda: pipeline.EncoderFeatures(None, None))
    raw: pipeline.MediaTensors = field(default_factory=lambda: pipeline.MediaTensors(None, None))

    def has(self, kind: str) -> bool:
        return self.stream(kind) is not None

    def stream(self, kind: str):
        """The stream's tensor, whichever form it is in."""
        cached = getattr(self.cached, kind)
        return cached if cached is not None else getattr(self.raw, kind)

    def keep_windows(self, windows: int, tokens_per_window: int) -> None:
        """Only the first ``windows`` audio windows (those the prompt could hold; 0: none)."""
        if self.raw.audio is not None:
            self.raw.audio = self.raw.audio[:windows] if windows else None
        if self.cached.audio is not None:
            self.cached.audio = self.cached.audio[: windows * tokens_per_window] if windows else None

    def encoded(self, model) -> pipeline.EncoderFeatures:
        """Every stream as encoder features: the cached ones as they are, the raw ones encoded."""
        fresh = pipeline.encode(model, [self.raw])[0]
        return pipeline.EncoderFeatures(
            self.cached.video if self.cached.video is not None else fresh.video,
            self.cached.audio if self.cached.audio is not None else fresh.audio,
        )


class ManifestDataset(Dataset):
    """Samples of one or more manifests, processed for the model. ``modalities`` says which
    branches this run uses (the vision-only baseline drops audio everywhere)."""

    def __init__(
        self,
        manifests: list[str],
        processor,
        modalities: list[str],
        feature_store=None,
        skip_log: SkipLog | None = None,
        max_length: int | None = None,
        data_root: str | None = None,
    ):
        self.rows = [row for m in manifests for row in read_manifest(m, data_root)]
        if not self.rows:
            raise ValueError(f"no samples in {', '.join(manifests)}")
        self.processor = processor
        self.modalities = set(modalities)
        self.store = feature_store
        self.skips = skip_log or SkipLog(None)
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Example:
        for attempt in range(len(self.rows)):
            row = self.rows[(index + attempt) % len(self.rows)]
            try:
                return self.load(row)
            except (MediaError, ContextLengthError, FileNotFoundError, ValueError, KeyError) as exc:
                self.skips.add(row, f"{type(exc).__name__}: {exc}")
        raise RuntimeError("no usable sample in the dataset; see skipped.jsonl")

    def load(self, row: dict) -> Example:
        video_path, audio_path = media_paths(row, self.modalities)
        if video_path is None and audio_path is None:
            raise ValueError("the sample has no media this run uses")
        example = Example([], [])
        to_decode: dict[str, list[str]] = {}  # file -> the streams wanted from it: one decode each
        for kind, path in (("video", video_path), ("audio", audio_path)):
            if path is None:
                continue
            cached = self.store.get(path, kind) if self.store else None
            if cached is not None:
                setattr(example.cached, kind, cached)
            elif not os.path.exists(path):
                raise FileNotFoundError(f"missing {kind} {path}")
            else:
                to_decode.setdefault(path, []).append(kind)
        for path, kinds in to_decode.items():
            window = Window(row["start"], row.get("end")) if kinds == ["audio"] and "start" in row else None
            media = _decode(path, self.processor.config, kinds, window)
            if media is not None:  # a video without a sound track: the audio branch is skipped
                tensors = pipeline.preprocess(self.processor, media)
                for kind in kinds:
                    setattr(example.raw, kind, getattr(tensors, kind))
        streams = pipeline.MediaTensors(*(example.stream(k) for k in ("video", "audio")))
        p = pipeline.prompt(self.processor, to_messages(row), streams, add_generation_prompt=False)
        example.keep_windows(p.audio_windows, self.processor.config.audio_tokens)  # what fits the context
        if self.max_length and len(p.ids) > self.max_length:
            raise ContextLengthError(len(p.ids), self.max_length, len(p.ids), 0)
        example.ids, example.labels = p.ids, p.labels
        return example


def _decode(path: str, config, kinds: list[str], window: Window | None = None) -> pipeline.Media | None:
    """The streams of a file a sample wants, in one decode; None for the audio alone of a video
    without a sound track."""
    try:
        return pipeline.decode(path, config, kinds, window)
    except MissingStream:
        if "video" in kinds:
            raise
        return None


class Collator:
    """Pads examples into a batch. Per stream, ``*_cached`` holds the cached features (video
    stacked, ``(B_v, ...)``; audio a list, one ``(W_i * 64, Ca)`` per sample) and ``*_raw`` a list
    of raw tensors; ``*_is_cached`` says, in batch order, which is which
    for the samples that have the stream. The trainer encodes the raw ones."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, examples: list[Example]) -> dict:
        longest = max(len(e.ids) for e in examples)
        ids = torch.full((len(examples), longest), self.pad, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], labels[i, :n] = torch.tensor(e.ids), 1, torch.tensor(e.labels)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for kind in ("video", "audio"):
            have = [e for e in examples if e.has(kind)]
            if not have:
                continue
            flags = [getattr(e.cached, kind) is not None for e in have]
            batch[f"{kind}_is_cached"] = torch.tensor(flags)
            cached = [getattr(e.cached, kind) for e, f in zip(have, flags) if f]
            raw = [getattr(e.raw, kind) for e, f in zip(have, flags) if not f]
            if cached:  # audio: a list, as clips hold different numbers of windows
                batch[f"{kind}_cached"] = torch.stack(cached) if kind == "video" else cached
            if raw:
                batch[f"{kind}_raw"] = raw
        return batch
