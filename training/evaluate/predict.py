"""Answers to a benchmark's questions: from a running service (our SDK; one upload per video,
its video_id for the video's other questions) or in-process from a checkpoint (the media
pipeline, one decode per video). Resumes: questions already answered are skipped."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from .. import jsonl
from .questions import resolve_video


def _with_modalities(answerer, modalities):
    other = copy.copy(answerer)  # shallow: the client, the model and the lock are shared
    other.modalities = modalities
    return other


class ServiceAnswerer:
    """Answers through our SDK; the first question about a video uploads it, later ones reuse
    its video_id."""

    def __init__(self, base_url: str, api_key: str | None, max_tokens: int, modalities: list[str] | None):
        from clients import Client

        self.client = Client(base_url=base_url, api_key=api_key, max_retries=3)
        self.max_tokens, self.modalities = max_tokens, modalities

    def with_modalities(self, modalities: list[str] | None) -> ServiceAnswerer:
        """The same client answering with other streams (a benchmark's splits)."""
        return _with_modalities(self, modalities)

    def ask_all(self, video: Path, questions: list[str], window: tuple[float, float | None] | None = None) -> list[str]:
        """The answers to questions about one video (or its window: start, end seconds)."""
        from clients import NotFoundError

        answers, video_id = [], None
        start, end = window or (None, None)
        for q in questions:
            kwargs = dict(
                prompt=q,
                max_tokens=self.max_tokens,
                temperature=0,
                input_modalities=self.modalities,
                start=start,
                end=end,
            )
            try:
                r = self.client.video.chat.create(video=video_id or str(video), **kwargs)
            except NotFoundError:  # the cached features were evicted: upload again
                r = self.client.video.chat.create(video=str(video), **kwargs)
            # A window applies only to a video sent with the request (a follow-up by video_id is
            # refused with 400), so windowed questions each send the file.
            video_id = None if window else r.video_id
            answers.append((r.choices[0].message.content or "").strip())
        return answers


class LocalAnswerer:
    """Answers in-process from a checkpoint (decodes each video once for all its questions)."""

    def __init__(self, checkpoint: str, max_tokens: int, modalities: list[str] | None, device: str = "cpu"):
        from model import AVChatModel

        self.model = AVChatModel.from_pretrained(checkpoint, device=device)
        self.max_tokens, self.modalities = max_tokens, modalities
        self.lock = threading.Lock()

    def with_modalities(self, modalities: list[str] | None) -> LocalAnswerer:
        """The same loaded model (and its lock) answering with other streams."""
        return _with_modalities(self, modalities)

    def ask_all(self, video: Path, questions: list[str], window: tuple[float, float | None] | None = None) -> list[str]:
        from model import pipeline
        from model.generation import answer
        from model.media import Window

        model = self.model
        span = Window(*window) if window else None
        with self.lock:
            _, embeddings = pipeline.embed_media(model, [str(video)], self.modalities, span)[0]
            answers = []
            for q in questions:
                p = pipeline.prompt(
                    model.processor,
                    [{"role": "user", "content": q}],
                    embeddings,
                    self.modalities,
                    max_new_tokens=self.max_tokens,
                )
                text, _, _ = answer(model, pipeline.prompt_embeds(model, p, embeddings), self.max_tokens)
                answers.append(text.strip())
        return answers


def predict(questions: list[dict], videos: Path | None, answerer, out: Path, concurrency: int) -> dict:
    done = {row["id"] for row in jsonl.read(out)} if out.exists() else set()
    todo = [q for q in questions if q["id"] not in done]
    by_video: dict[str, list[dict]] = {}
    for q in todo:
        by_video.setdefault(q["video"], []).append(q)
    missing: set[str] = set()
    failed: list[tuple[str, str]] = []

    def work(name: str) -> int:
        path = resolve_video(name, videos)
        items = by_video[name]
        if path is None:
            missing.add(name)
            return len(items)
        flat = [qq for q in items for qq in q["questions"]]
        try:
            answers = answerer.ask_all(path, flat)
        except Exception as exc:  # one bad video must not stop the benchmark
            failed.append((name, f"{type(exc).__name__}: {exc}"))
            return len(items)
        rows, k = [], 0
        for q in items:
            n = len(q["questions"])
            rows.append({**q, "predictions": answers[k : k + n]})
            k += n
        jsonl.append(out, rows)
        return len(items)

    with ThreadPoolExecutor(max(1, concurrency)) as pool, tqdm(total=len(todo), desc="predict", unit="q") as bar:
        for future in as_completed([pool.submit(work, name) for name in by_video]):
            bar.update(future.result())
    answered = sum(1 for _ in jsonl.read(out)) if out.exists() else 0
    summary = {
        "answered": answered,
        "questions": len(questions),
        "skipped_done": len(done),
        "missing_videos": sorted(missing),
        "failed": failed,
    }
    print(
        f"predict: {answered} of {len(questions)} answered in {out} ({len(done)} were already there); "
        f"{len(missing)} videos missing, {len(failed)} failed"
    )
    for name in sorted(missing)[:10]:
        print(f"  missing video: {name}")
    for name, why in failed[:10]:
        print(f"  failed: {name}: {why}")
    return summary
