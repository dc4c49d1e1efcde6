"""Benchmark question files, normalised, and where their videos are."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..prepare import VIDEO_EXTS, find_media

METRICS = ("correctness", "detail", "context", "temporal", "consistency")


def load_questions(path: str | os.PathLike) -> list[dict]:
    """Normalises a question file to {id, video, kind, question(s), answer}."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        rows = data if isinstance(data, list) else list(data.values())
    items = []
    stem = path.stem
    for n, r in enumerate(rows):
        if {"Q1", "Q2", "A", "video_name"} <= set(r):
            items.append(
                {
                    "id": f"{stem}-{n}",
                    "video": r["video_name"],
                    "kind": "consistency",
                    "questions": [r["Q1"], r["Q2"]],
                    "answer": r["A"],
                }
            )
        elif {"Q", "A", "video_name"} <= set(r):
            kind = "temporal" if "temporal" in stem else "generic"
            items.append(
                {"id": f"{stem}-{n}", "video": r["video_name"], "kind": kind, "questions": [r["Q"]], "answer": r["A"]}
            )
        elif {"video", "question", "answer"} <= set(r):
            items.append(
                {
                    "id": r.get("id", f"{stem}-{n}"),
                    "video": r["video"],
                    "kind": "generic",
                    "questions": [r["question"]],
                    "answer": r["answer"],
                }
            )
        else:
            raise ValueError(f"{path}: item {n} is in no known format (keys {sorted(r)})")
    return items


def resolve_video(name: str, folder: Path | None) -> Path | None:
    """A question's video: a path, or a name looked up in the folder with the usual extensions."""
    if os.path.isabs(name) or folder is None:
        return Path(name) if Path(name).is_file() else None
    if (folder / name).is_file():
        return folder / name
    stems = [name] + ([name[2:]] if name.startswith("v_") else [])  # ActivityNet names carry a v_ prefix
    return find_media(folder, stems, VIDEO_EXTS)
