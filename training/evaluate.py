"""Video-ChatGPT's quantitative evaluation (five LLM-judged metrics) and the audio-visual
benchmark runner.

    # 1. answers, from a running service (one upload per video) or in-process from a checkpoint
    python -m training.evaluate predict --questions benchmarks/vcgbench/generic_qa.json --videos videos/ \\
        --base-url http://127.0.0.1:8000 --concurrency 4 --out runs/eval/av/generic.jsonl
    # 2. scores from any OpenAI-compatible judge (key from $JUDGE_API_KEY or $OPENAI_API_KEY)
    python -m training.evaluate judge --predictions runs/eval/av/generic.jsonl --judge-base-url https://api.openai.com/v1 \\
        --judge-model gpt-4o-mini --out runs/eval/av/generic.judged.jsonl
    # 3. a table like the paper's, several runs side by side, plus a bar chart
    python -m training.evaluate report --run vision-only=runs/eval/v --run audio-visual=runs/eval/av --out runs/eval/report

Question formats: Video-ChatGPT's JSON lists (``video_name, Q, A``; consistency: ``video_name,
Q1, Q2, A``), and the audio-visual benchmark's JSON lines (``video, question, answer``).
Metrics: correctness, detail, context (generic and audio-visual questions), temporal (temporal
questions), consistency (the paraphrased pairs, judged together). Every step resumes: a rerun
skips what is done, and judge replies are cached, so a rerun costs no judge calls.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from .prepare import VIDEO_EXTS, find_media

METRICS = ("correctness", "detail", "context", "temporal", "consistency")

# -- questions --------------------------------------------------------------------------------------------


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
            items.append({"id": f"{stem}-{n}", "video": r["video_name"], "kind": "consistency",
                          "questions": [r["Q1"], r["Q2"]], "answer": r["A"]})
        elif {"Q", "A", "video_name"} <= set(r):
            kind = "temporal" if "temporal" in stem else "generic"
            items.append({"id": f"{stem}-{n}", "video": r["video_name"], "kind": kind, "questions": [r["Q"]],
                          "answer": r["A"]})
        elif {"video", "question", "answer"} <= set(r):
            items.append({"id": r.get("id", f"{stem}-{n}"), "video": r["video"], "kind": "generic",
                          "questions": [r["question"]], "answer": r["answer"]})
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


def _done_ids(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            done[row["id"]] = row
    return done


class _Appender:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.lock = path, threading.Lock()

    def write(self, row: dict) -> None:
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# -- predictions -----------------------------------------------------------------------------------------


class ServiceAnswerer:
    """Answers through our SDK; the first question about a video uploads it, later ones reuse
    its video_id."""

    def __init__(self, base_url: str, api_key: str | None, max_tokens: int, modalities: list[str] | None):
        from clients import Client

        self.client = Client(base_url=base_url, api_key=api_key, max_retries=3)
        self.max_tokens, self.modalities = max_tokens, modalities

    def ask_all(self, video: Path, questions: list[str]) -> list[str]:
        from clients import NotFoundError

        answers, video_id = [], None
        for q in questions:
            kwargs = dict(prompt=q, max_tokens=self.max_tokens, temperature=0, modalities=self.modalities)
            try:
                r = self.client.video.chat.create(video=video_id or str(video), **kwargs)
            except NotFoundError:  # the cached features were evicted: upload again
                r = self.client.video.chat.create(video=str(video), **kwargs)
            video_id = r.video_id
            answers.append((r.choices[0].message.content or "").strip())
        return answers


class LocalAnswerer:
    """Answers in-process from a checkpoint (decodes each video once for all its questions)."""

    def __init__(self, checkpoint: str, max_tokens: int, modalities: list[str] | None, device: str = "cpu"):
        from model import AVChatModel

        self.model = AVChatModel.from_pretrained(checkpoint, device=device)
        self.max_tokens, self.modalities = max_tokens, modalities
        self.lock = threading.Lock()

    def ask_all(self, video: Path, questions: list[str]) -> list[str]:
        import torch

        from model import load_media

        cfg, use = self.model.config, self.modalities or self.model.config.modalities
        media = load_media(str(video), cfg.num_frames, cfg.image_size, cfg.audio_seconds,
                           use_video="video" in use, use_audio="audio" in use)
        answers = []
        with self.lock, torch.inference_mode():
            for q in questions:
                sample = self.model.processor([{"role": "user", "content": q}], media, modalities=use,
                                              max_new_tokens=self.max_tokens)
                ids = list(self.model.generate(sample, max_new_tokens=self.max_tokens))
                answers.append(self.model.processor.decode(ids).strip())
        return answers


def predict(questions: list[dict], videos: Path | None, answerer, out: Path, concurrency: int) -> dict:
    done = _done_ids(out)
    todo = [q for q in questions if q["id"] not in done]
    by_video: dict[str, list[dict]] = {}
    missing: set[str] = set()
    for q in todo:
        by_video.setdefault(q["video"], []).append(q)
    writer = _Appender(out)
    failed = []

    def work(name: str) -> int:
        path = resolve_video(name, videos)
        if path is None:
            missing.add(name)
            return len(by_video[name])
        items = by_video[name]
        flat = [qq for q in items for qq in q["questions"]]
        try:
            answers = answerer.ask_all(path, flat)
        except Exception as exc:  # one bad video must not stop the benchmark
            failed.append((name, f"{type(exc).__name__}: {exc}"))
            return len(items)
        k = 0
        for q in items:
            n = len(q["questions"])
            writer.write({**q, "predictions": answers[k:k + n]})
            k += n
        return len(items)

    with ThreadPoolExecutor(max(1, concurrency)) as pool, tqdm(total=len(todo), desc="predict", unit="q") as bar:
        for future in as_completed([pool.submit(work, name) for name in by_video]):
            bar.update(future.result())
    summary = {"answered": len(_done_ids(out)), "skipped_done": len(done), "missing_videos": sorted(missing),
               "failed": failed}
    print(f"predict: {summary['answered']} answered in {out} ({len(done)} were already there); "
          f"{len(missing)} videos missing, {len(failed)} failed")
    for name in sorted(missing)[:10]:
        print(f"  missing video: {name}")
    for name, why in failed[:10]:
        print(f"  failed: {name}: {why}")
    return summary


# -- judging ---------------------------------------------------------------------------------------------

_ASPECTS = {
    "correctness": ("factual accuracy",
                    "Judge whether the predicted answer is factually right about the video, using the correct "
                    "answer as the reference. Contradictions or made-up details lower the score; a paraphrase "
                    "with the same facts is fully correct."),
    "detail": ("detail orientation",
               "Judge how complete and specific the predicted answer is: does it cover everything the correct "
               "answer covers, with concrete detail rather than generalities?"),
    "context": ("contextual understanding",
                "Judge whether the predicted answer fits the overall context of the video as the correct answer "
                "describes it, rather than answering something beside the point."),
    "temporal": ("temporal understanding",
                 "Judge whether the predicted answer gets the order and timing of events right, as the correct "
                 "answer gives them."),
    "consistency": ("consistency",
                    "Two differently worded questions ask for the same information. Judge whether the two "
                    "predicted answers agree with each other and with the correct answer."),
}


def judge_messages(metric: str, item: dict) -> list[dict]:
    """The judge prompt for one metric: system instructions for the aspect, then the question(s),
    the correct answer and the predicted answer(s); the reply is a Python dict string."""
    name, guidance = _ASPECTS[metric]
    system = (f"You evaluate answers that a video question-answering model gave, for {name}. {guidance} "
              "Score from 0 (worst) to 5 (best), integers only.")
    if metric == "consistency":
        body = (f"Question 1: {item['questions'][0]}\nQuestion 2: {item['questions'][1]}\n"
                f"Correct answer: {item['answer']}\n"
                f"Predicted answer to question 1: {item['predictions'][0]}\n"
                f"Predicted answer to question 2: {item['predictions'][1]}\n")
    else:
        body = (f"Question: {item['questions'][0]}\nCorrect answer: {item['answer']}\n"
                f"Predicted answer: {item['predictions'][0]}\n")
    user = (body + "\nReply with a Python dictionary string and nothing else, holding the key 'score' with an "
            "integer from 0 to 5, for example {'score': 3}.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def metrics_for(kind: str) -> list[str]:
    return {"generic": ["correctness", "detail", "context"], "temporal": ["temporal"],
            "consistency": ["consistency"]}[kind]


_SCORE_RE = re.compile(r"""['"]?score['"]?\s*[:=]\s*['"]?(\d+(?:\.\d+)?)""", re.I)


def parse_score(text: str) -> float | None:
    """The score from a judge reply: a dict string (possibly in a code block or with prose
    around it), or failing that a lone 'score: N'. None when there is none in 0..5."""
    if not text:
        return None
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            value = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            try:
                value = json.loads(match.group(0))
            except json.JSONDecodeError:
                continue
        if isinstance(value, dict) and "score" in value:
            try:
                score = float(value["score"])
            except (TypeError, ValueError):
                continue
            return score if 0 <= score <= 5 else None
    m = _SCORE_RE.search(text)
    if m:
        score = float(m.group(1))
        return score if 0 <= score <= 5 else None
    return None


class JudgeCache:
    """Replies keyed by (model, prompt): a rerun asks the judge nothing it already answered."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.replies: dict[str, str] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.replies[row["key"]] = row["reply"]

    @staticmethod
    def key(model: str, messages: list[dict]) -> str:
        return hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def put(self, key: str, reply: str) -> None:
        with self.lock:
            self.replies[key] = reply
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "reply": reply}) + "\n")


class Judge:
    """Any OpenAI-compatible chat-completions endpoint, through our SDK's client (retries with
    backoff on connection errors, 429 and 5xx, honouring Retry-After)."""

    def __init__(self, base_url: str, model: str, api_key: str | None, cache: JudgeCache, max_retries: int = 5,
                 parse_attempts: int = 3):
        from clients import Client

        self.client = Client(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=120)
        self.model, self.cache, self.parse_attempts = model, cache, parse_attempts
        self.calls = 0
        self._lock = threading.Lock()

    def score(self, messages: list[dict]) -> tuple[float | None, str]:
        key = JudgeCache.key(self.model, messages)
        cached = self.cache.get(key)
        if cached is not None and parse_score(cached) is not None:
            return parse_score(cached), cached
        reply = ""
        for attempt in range(self.parse_attempts):
            with self._lock:
                self.calls += 1
            r = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0,
                                                    max_tokens=64, seed=attempt)
            reply = r.choices[0].message.content or ""
            score = parse_score(reply)
            if score is not None:
                self.cache.put(key, reply)
                return score, reply
        return None, reply


def judge(predictions: Path, judge_: Judge, out: Path, concurrency: int) -> dict:
    items = list(_done_ids(predictions).values())
    done = _done_ids(out)
    writer = _Appender(out)
    jobs = [(item, m) for item in items for m in metrics_for(item["kind"]) if f"{item['id']}|{m}" not in done]
    unparsed = 0

    def work(job):
        item, metric = job
        score, reply = judge_.score(judge_messages(metric, item))
        if score is None:  # not written: a rerun asks again
            return True
        writer.write({"id": f"{item['id']}|{metric}", "item": item["id"], "metric": metric, "score": score,
                      "reply": reply, "kind": item["kind"], "questions": item["questions"],
                      "answer": item["answer"], "predictions": item["predictions"]})
        return False

    with ThreadPoolExecutor(max(1, concurrency)) as pool, tqdm(total=len(jobs), desc="judge", unit="call") as bar:
        for future in as_completed([pool.submit(work, j) for j in jobs]):
            unparsed += future.result()
            bar.update(1)
    print(f"judge: {len(jobs)} scores this run ({len(done)} already there), {judge_.calls} judge calls, "
          f"{unparsed} unparsable replies")
    return {"scored": len(jobs), "calls": judge_.calls, "unparsed": unparsed}


# -- report ------------------------------------------------------------------------------------------------


def summarise(judged: list[Path]) -> dict:
    scores: dict[str, list[float]] = {}
    for path in judged:
        for row in _done_ids(path).values():
            if row.get("score") is not None:
                scores.setdefault(row["metric"], []).append(row["score"])
    means = {m: sum(v) / len(v) for m, v in scores.items()}
    present = [m for m in METRICS if m in means]
    if present:
        means["average"] = sum(means[m] for m in present) / len(present)
    return {"means": means, "n": {m: len(v) for m, v in scores.items()}}


def report(runs: dict[str, list[Path]], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    summaries = {name: summarise(paths) for name, paths in runs.items()}
    cols = [m for m in METRICS if any(m in s["means"] for s in summaries.values())] + ["average"]
    titles = {"correctness": "Correctness", "detail": "Detail", "context": "Context", "temporal": "Temporal",
              "consistency": "Consistency", "average": "Average"}
    lines = ["| model | " + " | ".join(titles[c] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, s in summaries.items():
        lines.append(f"| {name} | " + " | ".join(f"{s['means'][c]:.2f}" if c in s["means"] else "-"
                                                 for c in cols) + " |")
    table = "\n".join(lines)
    (out / "report.md").write_text(table + "\n")
    (out / "report.json").write_text(json.dumps(summaries, indent=1))
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for name, paths in runs.items():
            for path in paths:
                for row in _done_ids(path).values():
                    f.write(json.dumps({"run": name, **row}, ensure_ascii=False) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6))
        width = 0.8 / max(1, len(summaries))
        for i, (name, s) in enumerate(summaries.items()):
            ax.bar([j + (i - (len(summaries) - 1) / 2) * width for j in range(len(cols))],
                   [s["means"].get(c, 0) for c in cols], width, label=name)
        ax.set_xticks(range(len(cols)), [titles[c] for c in cols])
        ax.set_ylim(0, 5)
        ax.set_ylabel("judge score (0-5)")
        ax.set_title("Video-ChatGPT judge scores")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "report.png", dpi=120)
        plt.close(fig)
    except ImportError:
        pass
    return table


# -- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="answer a benchmark's questions")
    pr.add_argument("--questions", required=True, help="generic_qa.json, temporal_qa.json, consistency_qa.json "
                                                       "or an audio-visual JSON-lines file")
    pr.add_argument("--videos", help="folder of the videos named in the questions")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--base-url", help="a running service (our SDK; $AVCHAT_API_KEY for its key)")
    src.add_argument("--checkpoint", help="answer in-process from a checkpoint folder or preset")
    pr.add_argument("--modalities", default=None, help="audio,video (default) or video (the baseline)")
    pr.add_argument("--max-tokens", type=int, default=256)
    pr.add_argument("--concurrency", type=int, default=4, help="videos in flight at once")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--out", required=True, help="predictions (JSON lines; a rerun continues it)")
    ju = sub.add_parser("judge", help="score predictions with an OpenAI-compatible judge")
    ju.add_argument("--predictions", required=True)
    ju.add_argument("--judge-base-url", required=True, help="e.g. https://api.openai.com/v1")
    ju.add_argument("--judge-model", required=True)
    ju.add_argument("--concurrency", type=int, default=8)
    ju.add_argument("--cache", help="judge reply cache (default: beside --out)")
    ju.add_argument("--out", required=True)
    rp = sub.add_parser("report", help="tables and a chart of judged runs, side by side")
    rp.add_argument("--run", action="append", required=True,
                    help="NAME=PATH, PATH a judged file or a folder of *.judged.jsonl (repeat per run)")
    rp.add_argument("--out", required=True)
    args = p.parse_args(argv)

    if args.command == "predict":
        if not os.path.exists(args.questions):
            print(f"error: --questions {args.questions}: no such file", file=sys.stderr)
            return 2
        if args.videos and not os.path.isdir(args.videos):
            print(f"error: --videos {args.videos}: no such folder", file=sys.stderr)
            return 2
        modalities = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
        answerer = (ServiceAnswerer(args.base_url, os.environ.get("AVCHAT_API_KEY"), args.max_tokens, modalities)
                    if args.base_url else LocalAnswerer(args.checkpoint, args.max_tokens, modalities, args.device))
        predict(load_questions(args.questions), Path(args.videos) if args.videos else None, answerer,
                Path(args.out), args.concurrency)
        return 0
    if args.command == "judge":
        key = os.environ.get("JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        out = Path(args.out)
        cache = JudgeCache(Path(args.cache) if args.cache else out.with_name(out.stem + ".cache.jsonl"))
        judge(Path(args.predictions), Judge(args.judge_base_url, args.judge_model, key, cache), out,
              args.concurrency)
        return 0
    runs: dict[str, list[Path]] = {}
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep:
            print(f"error: --run takes NAME=PATH, got {spec!r}", file=sys.stderr)
            return 2
        path_ = Path(path)
        files = sorted(path_.glob("*.judged.jsonl")) if path_.is_dir() else [path_]
        if not files or not all(f.exists() for f in files):
            print(f"error: --run {spec}: no judged files there", file=sys.stderr)
            return 2
        runs[name] = files
    print(report(runs, Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
