"""Data preparation: source datasets -> JSON-lines manifests (LLaVA conversation format), and the
encoder feature cache.

    python -m training.prepare commonvoice --tsv cv/en/train.tsv --out data/cv.jsonl
    python -m training.prepare audiocaps --csv audiocaps/train.csv --audio-dir audiocaps/audio --out data/ac.jsonl
    python -m training.prepare videoinstruct --json VideoInstruct100K.json --videos videos/ --out data/vi.jsonl
    python -m training.prepare laion --images laion/ --out data/laion.jsonl

Media paths are written relative to the data root: the manifest's folder, or ``--data-root``
(give training the same ``--data-root``), so a manifest made on one machine works inside the
container or on another node. The source data may be read-only: what is written (the wavs
extracted from videos) goes to ``--audio-dir``. AudioCaps clips are full-length recordings:
each row keeps the CSV's ``start_time`` as a 10 s window (``start``/``end``) that training
decodes, so nothing is cut to disk.

Every command shows a progress bar, works in parallel (--workers), resumes (samples already in
the output are skipped, so rerunning the same command finishes an interrupted run, even one
killed mid-line) and reports the files it skipped (OUT.skipped.jsonl, rewritten each run).
The feature cache is built by ``python -m training.features`` (``prepare features`` is the
same command).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import wave
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.decoding import audio_job
from model.ffmpeg import run_job
from model.media import AUDIO_SAMPLE_RATE, MediaError, MediaLimits, whole
from model.probe import probe

from . import jsonl
from .templates import CAPTION_TEMPLATES, IMAGE_CAPTION_TEMPLATES, TRANSCRIBE_TEMPLATES, pick_template

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus")
AUDIOCAPS_SECONDS = 10.0
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


class Skip(Exception):
    """This item cannot be used; the message says why."""


class ManifestWriter:
    """Appends rows to a manifest as they are made; knows which ids are already there; writes
    media paths relative to the data root."""

    def __init__(self, path: str | os.PathLike, data_root: str | os.PathLike | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(data_root or self.path.parent).resolve()
        self.done: set[str] = {row["id"] for row in jsonl.read(self.path)} if self.path.exists() else set()
        self.skip_path = self.path.with_suffix(self.path.suffix + ".skipped.jsonl")
        self.skip_path.unlink(missing_ok=True)  # this run's skips only: a rerun retries them
        self._lock = threading.Lock()
        self.written = 0
        self.skipped: list[tuple[str, str]] = []

    def relative(self, path: str | os.PathLike) -> str:
        """A media path as the manifest stores it: under the data root if it is there."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def write(self, rows: list[dict]) -> None:
        with self._lock:
            new = [row for row in rows if row["id"] not in self.done]
            for row in new:
                for key in ("video", "audio", "image"):
                    if row.get(key):
                        row[key] = self.relative(row[key])
                self.done.add(row["id"])
            jsonl.append(self.path, new)
            self.written += len(new)

    def skip(self, item: str, reason: str) -> None:
        with self._lock:
            self.skipped.append((item, reason))
            jsonl.append(self.skip_path, [{"item": item, "reason": reason}])

    def report(self, what: str) -> None:
        print(
            f"{what}: wrote {self.written} new samples to {self.path} ({len(self.done)} in all); "
            f"skipped {len(self.skipped)}" + (f" (see {self.skip_path})" if self.skipped else "")
        )
        for item, reason in self.skipped[:10]:
            print(f"  skipped {item}: {reason}")
        if len(self.skipped) > 10:
            print(f"  ... and {len(self.skipped) - 10} more")


def run_parallel(jobs: list, work, writer: ManifestWriter, workers: int, desc: str) -> None:
    """Runs ``work(job) -> list[row]`` over jobs with a progress bar; a ``Skip`` is recorded."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, tqdm(total=len(jobs), desc=desc, unit="item") as bar:
        futures = {pool.submit(work, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                writer.write(future.result())
            except (Skip, MediaError) as exc:
                writer.skip(str(job[0] if isinstance(job, tuple) else job), str(exc))
            bar.update(1)


def _check_audio(path: str):
    if not os.path.exists(path):
        raise Skip(f"missing file {path}")
    try:
        info = probe(path)
    except MediaError as exc:
        raise Skip(str(exc)) from None
    if not info.has_audio or info.duration <= 0:
        raise Skip(f"{path}: no audio stream")
    return info


def find_media(folder: Path, stems: list[str], exts: tuple[str, ...]) -> Path | None:
    """The first ``folder/<stem><ext>`` that exists."""
    for stem in stems:
        for ext in exts:
            candidate = folder / f"{stem}{ext}"
            if candidate.exists():
                return candidate
    return None


# -- sources ---------------------------------------------------------------------------------------


def commonvoice(args) -> ManifestWriter:
    """CommonVoice: a TSV (client_id, path, sentence, ...) and its clips/ folder -> transcription."""
    tsv = Path(args.tsv)
    clips = Path(args.clips) if args.clips else tsv.parent / "clips"
    with open(tsv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if rows and not {"path", "sentence"} <= set(rows[0]):
        raise SystemExit(f"error: {tsv} needs the CommonVoice columns 'path' and 'sentence'")
    writer = ManifestWriter(args.out, args.data_root)
    jobs = [
        (r["path"], r["sentence"])
        for r in rows[: args.limit or None]
        if f"cv-{Path(r['path']).stem}" not in writer.done
    ]

    def work(job):
        name, sentence = job
        if not sentence or not sentence.strip():
            raise Skip("empty sentence")
        path = str((clips / name).resolve())
        _check_audio(path)
        sid = f"cv-{Path(name).stem}"
        return [
            {
                "id": sid,
                "audio": path,
                "task": "transcribe",
                "conversations": [
                    {"from": "human", "value": "<audio>\n" + pick_template(TRANSCRIBE_TEMPLATES, sid, args.seed)},
                    {"from": "gpt", "value": sentence.strip()},
                ],
            }
        ]

    run_parallel(jobs, work, writer, args.workers, "commonvoice")
    return writer


def audiocaps(args) -> ManifestWriter:
    """AudioCaps: a CSV (audiocap_id, youtube_id, start_time, caption) and a folder of audio files
    named by youtube_id or audiocap_id -> captioning of the 10 s from start_time (a file already
    cut to 10 s is used whole)."""
    audio_dir = Path(args.audio_dir)
    with open(args.csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"audiocap_id", "youtube_id", "caption"} <= set(rows[0]):
        raise SystemExit(f"error: {args.csv} needs the AudioCaps columns audiocap_id, youtube_id, caption")
    writer = ManifestWriter(args.out, args.data_root)
    jobs = [(r["audiocap_id"], r) for r in rows[: args.limit or None] if f"ac-{r['audiocap_id']}" not in writer.done]

    def work(job):
        cap_id, r = job
        if not (r.get("caption") or "").strip():
            raise Skip("empty caption")
        found = find_media(audio_dir, [r["youtube_id"], cap_id, f"Y{r['youtube_id']}"], AUDIO_EXTS)
        if found is None:
            raise Skip(f"no audio file for youtube_id {r['youtube_id']} in {audio_dir}")
        info = _check_audio(str(found))
        sid = f"ac-{cap_id}"
        row = {
            "id": sid,
            "audio": str(found.resolve()),
            "task": "caption",
            "conversations": [
                {"from": "human", "value": "<audio>\n" + pick_template(CAPTION_TEMPLATES, sid, args.seed)},
                {"from": "gpt", "value": r["caption"].strip()},
            ],
        }
        start = float(r.get("start_time") or 0)
        if info.duration > AUDIOCAPS_SECONDS + 1:  # a full-length recording: its 10 s segment
            if start >= info.duration:
                raise Skip(f"start_time {start:g} s is past the end of {found.name} ({info.duration:.1f} s)")
            row["start"], row["end"] = start, min(start + AUDIOCAPS_SECONDS, info.duration)
        return [row]

    run_parallel(jobs, work, writer, args.workers, "audiocaps")
    return writer


def extract_wav(video: str, wav: Path) -> None:
    """16 kHz mono wav of a video's sound track (the paper's preprocessing step), decoded through
    the same allow-listed, budgeted ffmpeg path as everything else."""
    if wav.exists() and wav.stat().st_size > 44:
        return
    wav.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = probe(video)
        pcm = run_job(audio_job(video, info, MediaLimits.from_env(), None, whole(info)), video)
    except MediaError as exc:
        raise Skip(f"audio extraction failed: {exc}") from None
    tmp = wav.with_suffix(".tmp.wav")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_SAMPLE_RATE)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    tmp.rename(wav)


def videoinstruct(args) -> ManifestWriter:
    """VideoInstruct100K: its JSON (video_id, q, a) and a folder of videos -> audio-visual QA, with
    each video's sound extracted to a 16 kHz mono wav."""
    with open(args.json, encoding="utf-8") as f:
        data = json.load(f)
    videos = Path(args.videos)
    out = Path(args.out)
    audio_dir = Path(args.audio_dir) if args.audio_dir else out.parent / (out.stem + "_audio")
    writer = ManifestWriter(out)
    by_video: dict[str, list[tuple[int, dict]]] = {}
    for n, item in enumerate(data[: args.limit or None]):
        if not {"video_id", "q", "a"} <= set(item):
            writer.skip(f"item {n}", "needs video_id, q and a")
            continue
        if f"vi-{item['video_id']}-{n}" not in writer.done:
            by_video.setdefault(str(item["video_id"]), []).append((n, item))

    def work(job):
        video_id, items = job
        found = find_media(videos, [video_id, f"v_{video_id}"], VIDEO_EXTS)
        if found is None:
            raise Skip(f"no video file for {video_id} in {videos}")
        try:
            info = probe(str(found))
        except MediaError as exc:
            raise Skip(str(exc)) from None
        if not info.has_video:
            raise Skip(f"{found.name}: no video stream")
        wav = None
        if info.has_audio:
            wav = audio_dir / f"{video_id}.wav"
            extract_wav(str(found), wav)
        rows = []
        for n, item in items:
            row = {
                "id": f"vi-{video_id}-{n}",
                "video": str(found.resolve()),
                "conversations": [
                    {"from": "human", "value": "<video>\n" + ("<audio>\n" if wav else "") + item["q"].strip()},
                    {"from": "gpt", "value": item["a"].strip()},
                ],
            }
            if wav is not None:
                row["audio"] = str(wav.resolve())
            rows.append(row)
        return rows

    run_parallel(list(by_video.items()), work, writer, args.workers, "videoinstruct")
    return writer


def laion(args) -> ManifestWriter:
    """LAION-style image-caption data as img2dataset writes it: image files with a caption in a
    sibling .txt file -> samples for vision-projector pretraining."""
    root = Path(args.images)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    writer = ManifestWriter(args.out, args.data_root)
    jobs = [
        (str(p), p)
        for p in images[: args.limit or None]
        if f"img-{p.relative_to(root).with_suffix('')}".replace("/", "-") not in writer.done
    ]

    def work(job):
        _, path = job
        caption_file = path.with_suffix(".txt")
        if not caption_file.exists():
            raise Skip("no caption .txt beside the image")
        caption = caption_file.read_text(encoding="utf-8").strip()
        if not caption:
            raise Skip("empty caption")
        try:
            if not probe(str(path)).has_video:
                raise Skip("not an image")
        except MediaError as exc:
            raise Skip(str(exc)) from None
        sid = f"img-{path.relative_to(root).with_suffix('')}".replace("/", "-")
        return [
            {
                "id": sid,
                "image": str(path.resolve()),
                "task": "image_caption",
                "conversations": [
                    {"from": "human", "value": "<video>\n" + pick_template(IMAGE_CAPTION_TEMPLATES, sid, args.seed)},
                    {"from": "gpt", "value": caption},
                ],
            }
        ]

    run_parallel(jobs, work, writer, args.workers, "laion")
    return writer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["features"]:
        from .features import main as features

        return features(argv[1:])
    p = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="source", required=True)

    def common(sp, out=True):
        if out:
            sp.add_argument("--out", required=True, help="the manifest to write (JSON lines; appended on rerun)")
        sp.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="parallel workers")
        sp.add_argument("--limit", type=int, default=0, help="use only the first N source items (0: all)")
        sp.add_argument("--seed", type=int, default=0, help="seed for the instruction-template draw")
        sp.add_argument(
            "--data-root",
            default=None,
            help="media paths are written relative to this folder (default: the manifest's folder)",
        )

    cv = sub.add_parser("commonvoice", help="CommonVoice TSV + clips -> transcription samples")
    cv.add_argument("--tsv", required=True)
    cv.add_argument("--clips", help="the clips folder (default: clips/ beside the TSV)")
    common(cv)
    ac = sub.add_parser("audiocaps", help="AudioCaps CSV + audio -> captioning samples")
    ac.add_argument("--csv", required=True)
    ac.add_argument("--audio-dir", required=True)
    common(ac)
    vi = sub.add_parser("videoinstruct", help="VideoInstruct100K JSON + videos -> audio-visual QA samples")
    vi.add_argument("--json", required=True)
    vi.add_argument("--videos", required=True)
    vi.add_argument("--audio-dir", help="where the extracted wavs go (default: beside the manifest)")
    common(vi)
    la = sub.add_parser("laion", help="img2dataset-style images + .txt captions -> image-caption samples")
    la.add_argument("--images", required=True)
    common(la)
    sub.add_parser("features", help="the feature cache: python -m training.features (same arguments)")
    args = p.parse_args(argv)

    for attr in ("tsv", "csv", "json"):
        if getattr(args, attr, None) and not os.path.exists(getattr(args, attr)):
            print(f"error: --{attr} {getattr(args, attr)}: no such file", file=sys.stderr)
            return 2
    for attr in ("audio_dir", "videos", "images", "clips"):
        value = getattr(args, attr, None)
        if value and attr != "audio_dir" and not os.path.isdir(value):
            print(f"error: --{attr.replace('_', '-')} {value}: no such folder", file=sys.stderr)
            return 2
    if args.source == "audiocaps" and not os.path.isdir(args.audio_dir):
        print(f"error: --audio-dir {args.audio_dir}: no such folder", file=sys.stderr)
        return 2
    writer = {"commonvoice": commonvoice, "audiocaps": audiocaps, "videoinstruct": videoinstruct, "laion": laion}[
        args.source
    ](args)
    writer.report(args.source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
