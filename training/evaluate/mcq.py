"""Multiple-choice benchmarks (WorldSense, AV-SpeakerBench, AVHBench): the prompt, the reply's
letter, the answers per split and the accuracy per task and split.

    python -m training.evaluate mcq --questions worldsense_qa.json --videos videos/ \\
        --base-url http://127.0.0.1:8000 --out runs/mcq/worldsense

A reply is read as a letter ("B", "(B)", "B.", "The answer is B", or the option's own text), or
as yes/no for AVHBench's judgments; anything else is "unparsed" and counts as wrong. Accuracy
is over every sample, with the random-choice rate beside it. Resumes: samples already in
``predictions.jsonl`` are kept, and the report is rebuilt from the replies, so a better parser
rescores an old run without asking again.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from .. import charts, jsonl
from .questions import resolve_video

UNPARSED = "unparsed"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
YES_NO_INSTRUCTION = "Answer with yes or no."


def is_yes_no(sample: dict) -> bool:
    return sample["labels"] == ["yes", "no"]


def prompt(sample: dict) -> str:
    """The question, its lettered options and how to answer."""
    if is_yes_no(sample):
        return f"{sample['question']}\n{YES_NO_INSTRUCTION}"
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(sample["labels"], sample["options"]))
    return f"{sample['question']}\n{options}\n{INSTRUCTION}"


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _by_text(reply: str, options: list[str], labels: list[str]) -> str | None:
    """The option whose text the reply gives: exactly one, or the one holding the others
    ("a dog barking" over "a dog")."""
    said = f" {_norm(reply)} "
    hits = [(n, _norm(o)) for n, o in enumerate(options) if _norm(o) and f" {_norm(o)} " in said]
    hits = [(n, o) for n, o in hits if not any(o != p and o in p for _, p in hits)]
    return labels[hits[0][0]] if len(hits) == 1 else None


def parse_choice(reply: str, options: list[str], labels: list[str]) -> str:
    """The label a reply picks (a letter, or "yes"/"no"), or "unparsed"."""
    text = (reply or "").replace("*", "").strip()
    if labels == ["yes", "no"]:
        m = re.search(r"\b(yes|no)\b", text, re.I)
        return m.group(1).lower() if m else UNPARSED
    letters = "".join(labels)
    letter = rf"([{letters}])"
    patterns = (
        rf"^[\(\[]?{letter}[\)\]]?[.:,)]?$",  # the whole reply: "B", "(B)", "B."
        rf"^(?:\(|\[){letter}(?:\)|\])",  # leading "(B) ..."
        rf"^{letter}\s*[.:)]",  # leading "B. ...", "B: ...", "B) ..."
        # "The answer is B", "Answer: (C)"; not "the answer is A dog"
        rf"(?i:answer|option|choice)(?i:\s+is)?\s*:?\s*[\(\[]?{letter}\b(?!\s+[a-z])",
    )
    for pattern in patterns:
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    if (found := _by_text(text, options, labels)) is not None:
        return found
    # A lone capital letter among the labels, once ("I pick C"); "A" before a lowercase word is
    # the article ("A dog"), but not before "and"/"or" ("A or B" names two).
    article = r"(?!\s+(?!and\b|or\b)[a-z])"
    loose = {m.group(1) for m in re.finditer(rf"(?<![\w'-]){letter}(?![\w'-]){article}", text)}
    return loose.pop() if len(loose) == 1 else UNPARSED


def answer_all(samples: list[dict], videos: Path | None, answerer, out: Path, concurrency: int) -> dict:
    """Answers the samples not yet in ``out``, one request group per video, split and window."""
    done = {row["id"] for row in jsonl.read(out)} if out.exists() else set()
    groups: dict[tuple, list[dict]] = {}
    for s in samples:
        if s["id"] not in done:
            groups.setdefault((s["video"], s["split"], tuple(s["window"] or ())), []).append(s)
    by_split = {s["split"]: answerer.with_modalities(s["modalities"]) for s in samples}
    missing: set[str] = set()
    failed: list[tuple[str, str]] = []

    def work(key: tuple) -> int:
        name, split, window = key
        items = groups[key]
        path = resolve_video(name, videos)
        if path is None:
            missing.add(name)
            return len(items)
        try:
            replies = by_split[split].ask_all(path, [prompt(s) for s in items], window or None)
        except Exception as exc:  # one bad video must not stop the benchmark
            failed.append((f"{name} ({split})", f"{type(exc).__name__}: {exc}"))
            return len(items)
        rows = []
        for s, reply in zip(items, replies):
            parsed = parse_choice(reply, s["options"], s["labels"])
            rows.append({**s, "prompt": prompt(s), "reply": reply, "parsed": parsed, "correct": parsed == s["answer"]})
        jsonl.append(out, rows)
        return len(items)

    todo = sum(len(v) for v in groups.values())
    with ThreadPoolExecutor(max(1, concurrency)) as pool, tqdm(total=todo, desc="mcq", unit="q") as bar:
        for future in as_completed([pool.submit(work, key) for key in groups]):
            bar.update(future.result())
    answered = sum(1 for _ in jsonl.read(out)) if out.exists() else 0
    print(
        f"mcq: {answered} of {len(samples)} samples answered in {out} ({len(done)} were already there); "
        f"{len(missing)} videos missing, {len(failed)} requests failed"
    )
    for name in sorted(missing)[:10]:
        print(f"  missing video: {name}")
    for name, why in failed[:10]:
        print(f"  failed: {name}: {why}")
    return {"answered": answered, "samples": len(samples), "missing_videos": sorted(missing), "failed": failed}


def _cell(rows: list[dict]) -> dict:
    n = len(rows)
    correct = sum(r["parsed"] == r["answer"] for r in rows)
    cell = {
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "chance": sum(1 / len(r["labels"]) for r in rows) / n,
        "unparsed": sum(r["parsed"] == UNPARSED for r in rows),
    }
    if all(is_yes_no(r) for r in rows):  # AVHBench's leaderboard reports how often a model says yes
        cell["yes_rate"] = sum(r["parsed"] == "yes" for r in rows) / n
    return cell


def score(rows: list[dict]) -> dict:
    """{benchmark: {split: {"overall": cell, "tasks": {task: cell}}}}, the replies parsed again."""
    rows = [{**r, "parsed": parse_choice(r["reply"], r["options"], r["labels"])} for r in rows]
    grouped: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        grouped.setdefault(r["benchmark"], {}).setdefault(r["split"], []).append(r)
    result: dict = {}
    for bench, splits in grouped.items():
        for split, split_rows in splits.items():
            tasks: dict[str, list[dict]] = {}
            for r in split_rows:
                tasks.setdefault(r["task"], []).append(r)
            result.setdefault(bench, {})[split] = {
                "overall": _cell(split_rows),
                "tasks": {t: _cell(v) for t, v in sorted(tasks.items())},
            }
    return result


def _group(split: dict, group: str) -> dict | None:
    return split["overall"] if group == "overall" else split["tasks"].get(group)


def report(predictions: Path, out: Path) -> str:
    """report.md (the table), report.json (the numbers) and report.png (a bar per task and split,
    chance marked). "yes (%)": how often a yes/no task was answered yes (AVHBench's bias column)."""
    scores = score(list(jsonl.read(predictions))) if predictions.exists() else {}
    lines = [
        "| benchmark | split | task | questions | accuracy (%) | chance (%) | unparsed | yes (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for bench, splits in scores.items():
        for split, s in splits.items():
            for task, c in [*s["tasks"].items(), ("overall", s["overall"])]:
                name = f"**{task}**" if task == "overall" else task
                lines.append(
                    f"| {bench} | {split} | {name} | {c['n']} | {100 * c['accuracy']:.1f} | "
                    f"{100 * c['chance']:.1f} | {c['unparsed']} | "
                    + (f"{100 * c['yes_rate']:.1f} |" if "yes_rate" in c else "- |")
                )
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(table + "\n")
    (out / "report.json").write_text(json.dumps(scores, indent=1))
    for bench, splits in scores.items():
        tasks = sorted({t for s in splits.values() for t in s["tasks"]})
        groups = [*tasks, "overall"]

        series = {
            split: [100 * c["accuracy"] if (c := _group(s, g)) else None for g in groups] for split, s in splits.items()
        }
        chance = [next((100 * c["chance"] for s in splits.values() if (c := _group(s, g))), 0.0) for g in groups]
        name = "report.png" if len(scores) == 1 else f"report-{bench}.png"
        charts.bars(
            out / name, groups, series, "accuracy (%)", f"{bench}: accuracy per task", (0, 100), {"chance": chance}
        )
    return table
