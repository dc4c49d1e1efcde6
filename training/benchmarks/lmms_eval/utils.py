"""lmms-eval hooks for the avchat_clips_mc task: the clip's path and the question with lettered
choices. lmms-eval imports this file by path (``!function utils.…`` in avchat_clips_mc.yaml)."""

from __future__ import annotations

import os
from pathlib import Path

# The vendored real clips (tests/media); AVCHAT_LMMS_MEDIA points elsewhere, e.g. at a copy.
MEDIA = Path(os.environ.get("AVCHAT_LMMS_MEDIA") or Path(__file__).resolve().parents[3] / "tests" / "media")
LETTERS = "ABCDEFGH"


def doc_to_visual(doc: dict) -> list[str]:
    """The clip as an absolute path: lmms-eval samples frames from it, or sends it as a file:// URL."""
    return [str((MEDIA / doc["video"]).resolve())]


def doc_to_text(doc: dict) -> str:
    options = "\n".join(f"({letter}) {choice}" for letter, choice in zip(LETTERS, doc["choices"]))
    return f"{doc['question']}\n{options}\nAnswer with the option's letter in parentheses."
