"""Multiple-choice benchmark files in their released layouts, normalised to one item shape.

    WorldSense      worldsense_qa.json: {video_id: {video_id, duration, domain, sub_category,
                    audio_class, video_caption, task0: {task_domain, task_type, question,
                    candidates: ["A. ...", ...], answer: "A"}, task1: ..., ...}, ...}
    AV-SpeakerBench the test split of plnguyen2908/Holistic_AVQA_bench, as a JSON list or JSON
                    lines: {question_id, video_id, video_path, audio_path, start_time: "mm:ss",
                    end_time, question, choices: "['A. ...', ...]" (a list, or its repr), answer:
                    "A", category, sub_category, task_id}
    AVHBench        json/{video_id}.json (a file, or the folder of them): [{video_id, task, text,
                    label: "Yes" | "No" | a caption}, ...]; AV Captioning is generative, so it is
                    left out (the loader says how many)

An item: {id, benchmark, task, video, question, options (texts, no letters), labels (what a
reply names: "A".."D", or "yes"/"no"), answer (one of the labels), window ([start, end] seconds
or None), meta}. The splits (the modalities a sample is answered with) are added by
:func:`expand`, one sample per item and split.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

LAYOUTS = ("worldsense", "av-speakerbench", "avhbench")

# A split is the modalities its samples are answered with: AV-SpeakerBench's comparison of the
# same model with sound and pictures, sound only and pictures only.
SPLITS = {"audio-visual": ["audio", "video"], "audio-only": ["audio"], "visual-only": ["video"]}
DEFAULT_SPLITS = {
    "worldsense": ["audio-visual"],
    "av-speakerbench": ["audio-visual", "audio-only", "visual-only"],
    "avhbench": ["audio-visual"],
}
AVH_GENERATIVE = {"AV Captioning"}

_LETTERED = re.compile(r"^\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])\s*[.:)])\s*(.*)$", re.S)  # "A. x", "(A) x", "B: x"


class LayoutError(ValueError):
    """A question file in none of the known layouts, or an item the layout cannot read."""


def _options(raw, where: str) -> tuple[list[str], list[str]]:
    """("A. a dog", "B. a cat") or plain texts -> (texts, letters)."""
    if isinstance(raw, str):  # AV-SpeakerBench stores the list's repr
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise LayoutError(f"{where}: options {raw[:80]!r} are not a list") from None
    if not isinstance(raw, list) or len(raw) < 2:
        raise LayoutError(f"{where}: needs a list of at least two options, got {raw!r:.80}")
    raw = [str(o) for o in raw]
    letters = [chr(ord("A") + n) for n in range(len(raw))]
    found = [_LETTERED.match(o) for o in raw]
    # Lettered only when every option is, A, B, C... in order: "U.S. troops" is a text, not option U.
    if all(found) and [next(g for g in m.groups()[:3] if g) for m in found] == letters:
        return [m.group(4).strip() for m in found], letters
    return [o.strip() for o in raw], letters


def _letter(answer, letters: list[str], texts: list[str], where: str) -> str:
    a = str(answer).strip()
    if a.strip("()[].: ") in letters:
        return a.strip("()[].: ")
    if a in texts:  # some exports give the option's text
        return letters[texts.index(a)]
    raise LayoutError(f"{where}: answer {answer!r} is none of the options {letters}")


def _seconds(value) -> float | None:
    """ "mm:ss", "hh:mm:ss" or a number of seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    total = 0.0
    for part in str(value).strip().split(":"):
        total = total * 60 + float(part)
    return total


def _worldsense(data: dict, stem: str) -> list[dict]:
    items = []
    for key, video in data.items():
        vid = str(video.get("video_id") or key)
        for task_key in sorted(k for k in video if k.startswith("task") and isinstance(video[k], dict)):
            t = video[task_key]
            where = f"{stem}: {vid}.{task_key}"
            texts, letters = _options(t.get("candidates"), where)
            items.append(
                {
                    "id": f"{vid}-{task_key}",
                    "benchmark": "worldsense",
                    "task": t.get("task_type") or "unknown",
                    "video": vid,
                    "question": t["question"],
                    "options": texts,
                    "labels": letters,
                    "answer": _letter(t["answer"], letters, texts, where),
                    "window": None,
                    "meta": {
                        "task_domain": t.get("task_domain"),
                        "domain": video.get("domain"),
                        "sub_category": video.get("sub_category"),
                        "audio_class": video.get("audio_class"),
                    },
                }
            )
    return items


def _av_speakerbench(rows: list[dict], stem: str) -> list[dict]:
    items = []
    for n, r in enumerate(rows):
        qid = str(r.get("question_id", f"{stem}-{n}"))
        where = f"{stem}: question {qid}"
        texts, letters = _options(r.get("choices"), where)
        start, end = _seconds(r.get("start_time")), _seconds(r.get("end_time"))
        items.append(
            {
                "id": qid,
                "benchmark": "av-speakerbench",
                "task": r.get("task_id") or "unknown",
                "video": r.get("video_path") or str(r["video_id"]),
                "question": r["question"],
                "options": texts,
                "labels": letters,
                "answer": _letter(r["answer"], letters, texts, where),
                "window": [start or 0.0, end] if end is not None and end > (start or 0.0) else None,
                "meta": {"category": r.get("category"), "sub_category": r.get("sub_category")},
            }
        )
    return items


def _avhbench(rows: list[dict], stem: str) -> tuple[list[dict], int]:
    items, generative = [], 0
    count: dict[str, int] = {}
    for r in rows:
        if r["task"] in AVH_GENERATIVE:
            generative += 1
            continue
        label = str(r["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise LayoutError(f"{stem}: {r['video_id']} {r['task']!r}: label {r['label']!r} is neither Yes nor No")
        vid = str(r["video_id"])
        n = count[vid] = count.get(vid, -1) + 1
        items.append(
            {
                "id": f"{vid}-{n}",
                "benchmark": "avhbench",
                "task": r["task"],
                "video": vid,
                "question": r["text"],
                "options": ["Yes", "No"],
                "labels": ["yes", "no"],
                "answer": label,
                "window": None,
                "meta": {},
            }
        )
    return items, generative


def detect(data) -> str:
    """The layout of a file's parsed content."""
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
        if isinstance(first, dict) and any(k.startswith("task") and isinstance(v, dict) for k, v in first.items()):
            return "worldsense"
    if isinstance(data, list) and data and isinstance(data[0], dict):
        keys = set(data[0])
        if {"question", "choices", "answer"} <= keys:
            return "av-speakerbench"
        if {"video_id", "task", "text", "label"} <= keys:
            return "avhbench"
        raise LayoutError(f"items with keys {sorted(keys)} are in none of the layouts {', '.join(LAYOUTS)}")
    raise LayoutError(f"content is in none of the layouts {', '.join(LAYOUTS)}")


def _read(path: Path):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def load(path: str | Path, layout: str = "auto") -> tuple[str, list[dict]]:
    """(layout, items) of a question file, or of a folder of them (AVHBench's json/)."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise LayoutError(f"{path}: no .json or .jsonl files there")
    items, found, generative = [], set(), 0
    for f in files:
        data = _read(f)
        kind = detect(data) if layout == "auto" else layout
        found.add(kind)
        try:
            if kind == "worldsense":
                items += _worldsense(data, f.stem)
            elif kind == "av-speakerbench":
                items += _av_speakerbench(data, f.stem)
            elif kind == "avhbench":
                more, skipped = _avhbench(data, f.stem)
                items, generative = items + more, generative + skipped
            else:
                raise LayoutError(f"unknown layout {kind!r} (one of {', '.join(LAYOUTS)})")
        except (KeyError, TypeError, AttributeError) as exc:
            raise LayoutError(f"{f}: not in the {kind} layout ({type(exc).__name__}: {exc})") from None
    if len(found) > 1:
        raise LayoutError(f"{path}: files in several layouts ({', '.join(sorted(found))}); give one benchmark")
    if generative:
        print(f"mcq: {generative} AV Captioning items left out (generative, not multiple-choice)")
    return found.pop(), items


def expand(items: list[dict], splits: list[str]) -> list[dict]:
    """One sample per item and split: its id is ``item|split``, its modalities the split's."""
    return [
        {**item, "id": f"{item['id']}|{split}", "item": item["id"], "split": split, "modalities": SPLITS[split]}
        for split in splits
        for item in items
    ]
