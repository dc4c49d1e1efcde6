"""The synthetic benchmark's clips and manifests: a coloured square moving over a sound, each
clip seeded and written with ffmpeg (numpy frames and audio in, H.264 + AAC out), and the
stage-1, stage-2 and held-out manifests that ask about them (``synthetic.py`` runs the
experiment)."""

from __future__ import annotations

import random
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import jsonl

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40)}
MOTIONS = ("sideways", "up and down")
SOUNDS = ("a low tone", "a high tone", "noise", "silence")
SIZE, FPS, SECONDS, RATE = 96, 10, 2.0, 16_000
LONG_FPS = 2  # long clips: frames are cheap to sample, but 100 of them over minutes need few
EARLY_S = 4.0  # an "early" long clip's sound lasts this long, then silence

QUESTIONS = {
    "visual": [("What colour is the square?", "colour"), ("Which colour do you see?", "colour")],
    "audio": [("What do you hear?", "sound")],
    "audio-visual": [("What colour is the square, and what do you hear?", "colour+sound")],
}
DESCRIBE_SOUND = ["Describe the sound.", "What sound is this?", "What can you hear?", "Name the sound you hear."]


@dataclass(frozen=True)
class ClipSpec:
    colour: str
    motion: str
    sound: str
    seed: int
    seconds: float = SECONDS
    sound_at: str = (
        "all"  # "all"; "late": silence, then the sound from `onset` on; "early": EARLY_S of it, then silence
    )
    onset: float = 0.0

    @property
    def name(self) -> str:
        base = f"{self.colour}-{self.motion.replace(' ', '')}-{self.sound.replace(' ', '')}-{self.seed}"
        return base if self.sound_at == "all" else f"{base}-{self.sound_at}{self.seconds:.0f}s"

    @property
    def fps(self) -> int:
        return FPS if self.seconds <= 10 else LONG_FPS


def _frames(spec: ClipSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    n = int(spec.seconds * spec.fps)
    frames = np.full((n, SIZE, SIZE, 3), 24, dtype=np.uint8)
    side = 28
    start = rng.integers(side, SIZE - 2 * side)
    for i in range(n):
        travel = int((SIZE - side) * i / (n - 1))
        x, y = (travel, start) if spec.motion == "sideways" else (start, travel)
        frames[i, y : y + side, x : x + side] = COLOURS[spec.colour]
    if spec.seed % 2:  # reverse direction on the same axis: direction itself is not asked
        frames = frames[::-1].copy()
    return frames


def _audio(spec: ClipSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed + 1)
    t = np.arange(int(spec.seconds * RATE)) / RATE
    if spec.sound == "a low tone":
        wave_ = 0.5 * np.sin(2 * np.pi * rng.uniform(200, 300) * t)
    elif spec.sound == "a high tone":
        wave_ = 0.5 * np.sin(2 * np.pi * rng.uniform(1800, 2600) * t)
    elif spec.sound == "noise":
        wave_ = rng.uniform(-0.5, 0.5, t.shape)
    else:
        wave_ = rng.normal(0, 1e-4, t.shape)
    quiet = (t < spec.onset) if spec.sound_at == "late" else (t >= EARLY_S) if spec.sound_at == "early" else None
    if quiet is not None:
        wave_ = np.where(quiet, rng.normal(0, 1e-4, t.shape), wave_)
    return wave_.astype(np.float32)


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def make_clip(spec: ClipSpec, path: Path) -> Path:
    """Writes an H.264 + AAC mp4 of the clip (and keeps nothing else)."""
    from model.ffmpeg import ffmpeg_exe

    path.parent.mkdir(parents=True, exist_ok=True)
    wav = path.with_suffix(".src.wav")
    write_wav(wav, _audio(spec))
    frames = _frames(spec)
    proc = subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{SIZE}x{SIZE}",
            "-r",
            str(spec.fps),
            "-i",
            "pipe:",
            "-i",
            str(wav),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            str(spec.fps),
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-shortest",
            str(path),
        ],
        input=frames.tobytes(),
        capture_output=True,
        timeout=120,
    )
    wav.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path.name}: {proc.stderr.decode(errors='replace')[-300:]}")
    return path


def answer(spec: ClipSpec, field: str) -> str:
    parts = {"colour": spec.colour, "motion": spec.motion, "sound": spec.sound}
    return ", ".join(parts[f] for f in field.split("+"))


def specs(n: int, seed: int) -> list[ClipSpec]:
    """n clips that cover every colour x motion x sound combination as evenly as possible."""
    rng = random.Random(seed)
    combos = [(c, m, s) for c in COLOURS for m in MOTIONS for s in SOUNDS]
    out = []
    while len(out) < n:
        rng.shuffle(combos)
        out += [ClipSpec(c, m, s, seed * 100_000 + len(out) + i) for i, (c, m, s) in enumerate(combos)]
    return out[:n]


def long_specs(n: int, seed: int, longest: float = 110.0) -> list[ClipSpec]:
    """n clips of 40 s to ``longest`` whose sound is either late (silence first, the sound from
    35 s or later) or early (its first 4 s, then silence), alternately; never silent throughout."""
    rng = random.Random(seed + 7)
    sounds = [s for s in SOUNDS if s != "silence"]
    out = []
    for i in range(n):
        seconds = round(rng.uniform(40.0, longest), 1)
        at = "late" if i % 2 == 0 else "early"
        onset = round(rng.uniform(35.0, seconds - 8.0), 1) if at == "late" else 0.0
        colour, motion = rng.choice(list(COLOURS)), rng.choice(MOTIONS)
        out.append(ClipSpec(colour, motion, rng.choice(sounds), seed * 100_000 + 50_000 + i, seconds, at, onset))
    return out


def kind_of(spec: ClipSpec, kind: str) -> str:
    """A question's kind in the report: sound questions about late sounds have a column of their own."""
    return "late sound" if kind == "audio" and spec.sound_at == "late" else kind


def build(
    out: Path, n_train: int, n_test: int, seed: int = 0, workers: int = 2, n_long: tuple[int, int] = (0, 0)
) -> dict[str, Path]:
    """Clips, a stage-1 audio manifest, a stage-2 QA manifest and a held-out QA manifest; with
    ``n_long`` (train, test), long clips whose sound is late or early join stage 2 and the test."""
    clips = out / "clips"
    train, test = specs(n_train, seed), specs(n_test, seed + 1)
    long_train, long_test = long_specs(n_long[0], seed), long_specs(n_long[1], seed + 1)
    with ThreadPoolExecutor(workers) as pool:
        list(
            pool.map(
                lambda s: (clips / f"{s.name}.mp4").exists() or make_clip(s, clips / f"{s.name}.mp4"),
                train + test + long_train + long_test,
            )
        )
    paths = {"stage1": out / "stage1.jsonl", "train": out / "train.jsonl", "test": out / "test.jsonl"}
    rng = random.Random(seed)
    jsonl.write(
        paths["stage1"],
        (
            {
                "id": f"snd-{s.name}",
                "video": f"clips/{s.name}.mp4",
                "audio_from_video": True,
                "conversations": [
                    {"from": "human", "value": "<audio>\n" + rng.choice(DESCRIBE_SOUND)},
                    {"from": "gpt", "value": s.sound},
                ],
            }
            for s in train
        ),
    )
    for split, items in (("train", train + long_train), ("test", test + long_test)):
        jsonl.write(
            paths[split],
            (
                {
                    "id": f"{split}-{s.name}-{field}",
                    "video": f"clips/{s.name}.mp4",
                    "audio_from_video": True,
                    "kind": kind_of(s, kind),
                    "field": field,
                    "conversations": [
                        {"from": "human", "value": "<video>\n<audio>\n" + q},
                        {"from": "gpt", "value": answer(s, field)},
                    ],
                }
                for s in items
                for kind, questions in QUESTIONS.items()
                for q, field in questions
            ),
        )
    return paths
