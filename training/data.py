"""Training data: JSON-lines manifests in the LLaVA conversation format, one sample per line::

    {"id": "cv-123", "audio": "/data/cv/clips/123.mp3",
     "conversations": [{"from": "human", "value": "<audio>\\nTranscribe the speech."},
                       {"from": "gpt", "value": "Hello there."}]}

``video`` (a video file), ``audio`` (an audio file, e.g. the wav extracted from the video) and
``image`` (an image, read as a one-frame video) are optional paths, absolute or relative to the
manifest. The placeholders in the text are ignored: the processor places ``<audio>``/``<video>``
itself from what the sample has and what the run uses.

A sample that cannot be used (missing or corrupt media, too long for the context) is skipped
and counted, never fatal: the dataset serves the next usable one instead and appends the reason
to ``skipped.jsonl`` in the run's folder.
"""

from __future__ import annotations

import json
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from model.media import MediaError, extract_audio, probe, sample_frames
from model.processor import ContextLengthError, Sample

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

TRANSCRIBE_TEMPLATES = [
    "Transcribe the speech in this audio.",
    "Write down exactly what is said.",
    "What words are spoken in this recording?",
    "Give a verbatim transcript of the audio.",
    "Listen and type out what the speaker says.",
    "Convert this spoken audio into text.",
    "What does the speaker say? Answer with the exact words.",
    "Please produce a transcript of this clip.",
    "Repeat, word for word, what you hear being said.",
    "Turn the speech you hear into written text.",
]

CAPTION_TEMPLATES = [
    "Describe the sound in this audio.",
    "What can you hear in this recording?",
    "Write a short caption for this audio clip.",
    "Summarise the sounds in a sentence.",
    "What is happening, judging only by the sound?",
    "Give a one-sentence description of the audio.",
    "Which sounds does this clip contain?",
    "Caption this sound recording.",
    "Tell me what this audio sounds like.",
    "Briefly describe the acoustic scene.",
]

IMAGE_CAPTION_TEMPLATES = [
    "Describe the image briefly.",
    "Write a short caption for this picture.",
    "What does this image show?",
    "Give a one-sentence description of the image.",
    "Summarise the picture in a few words.",
    "What is in this photo?",
    "Caption this image.",
    "Describe what you see.",
    "Provide a brief description of the image.",
    "What is depicted here?",
]


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Reads a JSON-lines manifest; media paths become absolute."""
    base = Path(path).resolve().parent
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            for key in ("video", "audio", "image"):
                if row.get(key) and not os.path.isabs(row[key]):
                    row[key] = str(base / row[key])
            rows.append(row)
    return rows


def to_messages(row: dict) -> list[dict]:
    return [{"role": ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]


class SkipLog:
    """Counts skipped samples and records why (one JSON line each, safe across workers)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.count = 0
        self._lock = threading.Lock()

    def add(self, row: dict, reason: str) -> None:
        with self._lock:
            self.count += 1
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"id": row.get("id"), "reason": reason}) + "\n")


@dataclass
class Example:
    """What the collator gets: the processed sample and its (cached or raw) media."""

    sample: object  # model.processor.Sample
    video_pooled: torch.Tensor | None = None
    audio_hidden: torch.Tensor | None = None


class ManifestDataset(Dataset):
    """Samples of one or more manifests, processed for the model. ``modalities`` says which
    branches this run uses (the vision-only baseline drops audio everywhere)."""

    def __init__(self, manifests: list[str], processor, modalities: list[str], feature_store=None,
                 skip_log: SkipLog | None = None, max_length: int | None = None):
        self.rows = [row for m in manifests for row in read_manifest(m)]
        if not self.rows:
            raise ValueError(f"no samples in {', '.join(manifests)}")
        self.processor = processor
        self.config = processor.config
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
        cfg = self.config
        video_path = row.get("video") or row.get("image")
        audio_path = row.get("audio") or (row.get("video") if row.get("audio_from_video") else None)
        use_video = "video" in self.modalities and video_path is not None
        use_audio = "audio" in self.modalities and audio_path is not None
        if not use_video and not use_audio:
            raise ValueError("the sample has no media this run uses")
        video_pooled = audio_hidden = frames = audio = None
        if use_video:
            video_pooled = self.store.get(video_path, "video") if self.store else None
            if video_pooled is None:
                if not os.path.exists(video_path):
                    raise FileNotFoundError(f"missing video {video_path}")
                frames = sample_frames(video_path, cfg.num_frames, cfg.image_size).frames
        if use_audio:
            audio_hidden = self.store.get(audio_path, "audio") if self.store else None
            if audio_hidden is None:
                if not os.path.exists(audio_path):
                    raise FileNotFoundError(f"missing audio {audio_path}")
                info = probe(audio_path)
                if not info.has_audio:
                    use_audio = False  # a video without a sound track: the audio branch is skipped
                else:
                    audio = extract_audio(audio_path, cfg.audio_seconds, info=info)
        ids, labels, counts = self.processor.encode_chat(to_messages(row), use_audio, use_video,
                                                         add_generation_prompt=False)
        if self.max_length and len(ids) > self.max_length:
            raise ContextLengthError(len(ids), self.max_length, len(ids), 0)
        sample = Sample(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        labels=torch.tensor([labels]),
                        pixel_values_videos=self.processor.pixel_values(frames)[None] if frames is not None else None,
                        input_features=self.processor.audio_features(audio)[None] if audio is not None else None,
                        token_counts=counts)
        return Example(sample, video_pooled, audio_hidden if use_audio else None)


class Collator:
    """Pads examples into a batch; cached features and raw media can mix within one batch."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, examples: list[Example]) -> dict:
        batch = self.processor.collate([e.sample for e in examples])
        for kind, raw_key, attr in (("video", "pixel_values_videos", "video_pooled"),
                                    ("audio", "input_features", "audio_hidden")):
            has = [e for e in examples if getattr(e, attr) is not None or
                   getattr(e.sample, raw_key) is not None]
            cached = [getattr(e, attr) for e in has if getattr(e, attr) is not None]
            if cached:
                batch[attr] = torch.stack(cached)
                if raw_key in batch:  # mixed: tell the model which sample is which, in order
                    batch[f"{kind}_is_cached"] = torch.tensor([getattr(e, attr) is not None for e in has])
        return batch


def pick_template(templates: list[str], key: str, seed: int = 0) -> str:
    """A template drawn per sample, reproducibly (the same sample always gets the same one)."""
    return random.Random(f"{seed}:{key}").choice(templates)
