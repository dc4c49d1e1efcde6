"""Instruction templates: ten phrasings per task, one drawn per sample (reproducibly), as the
paper's stage-1 data uses."""

from __future__ import annotations

import random

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


def pick_template(templates: list[str], key: str, seed: int = 0) -> str:
    """A template drawn per sample, reproducibly (the same sample always gets the same one)."""
    return random.Random(f"{seed}:{key}").choice(templates)
