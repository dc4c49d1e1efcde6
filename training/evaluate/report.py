"""The paper's table: judged runs side by side, per-metric means and their average, how many
questions each run answered and which judge scored it; a bar chart and a per-sample file. A
metric a run was not judged on is shown as missing, never as 0."""

from __future__ import annotations

import json
from pathlib import Path

from .. import charts, jsonl
from .questions import METRICS

TITLES = {
    "correctness": "Correctness",
    "detail": "Detail",
    "context": "Context",
    "temporal": "Temporal",
    "consistency": "Consistency",
    "average": "Average",
}


def summarise(judged: list[Path]) -> dict:
    scores: dict[str, list[float]] = {}
    answered, judges = set(), set()
    for path in judged:
        for row in jsonl.read(path):
            if row.get("score") is not None:
                scores.setdefault(row["metric"], []).append(row["score"])
                answered.add(row["item"])
                judges.add(row.get("judge_model") or "unknown")
    means = {m: sum(v) / len(v) for m, v in scores.items()}
    present = [m for m in METRICS if m in means]
    if present:
        means["average"] = sum(means[m] for m in present) / len(present)
    return {
        "means": means,
        "n": {m: len(v) for m, v in scores.items()},
        "answered": len(answered),
        "judge_models": sorted(judges),
    }


def report(runs: dict[str, list[Path]], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    summaries = {name: summarise(paths) for name, paths in runs.items()}
    cols = [m for m in METRICS if any(m in s["means"] for s in summaries.values())] + ["average"]
    lines = [
        "| model | " + " | ".join(TITLES[c] for c in cols) + " | questions | judge |",
        "|---|" + "---|" * (len(cols) + 2),
    ]
    for name, s in summaries.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{s['means'][c]:.2f}" if c in s["means"] else "missing" for c in cols)
            + f" | {s['answered']} | {', '.join(s['judge_models'])} |"
        )
    table = "\n".join(lines)
    (out / "report.md").write_text(table + "\n")
    (out / "report.json").write_text(json.dumps(summaries, indent=1))
    jsonl.write(
        out / "samples.jsonl",
        ({"run": name, **row} for name, paths in runs.items() for path in paths for row in jsonl.read(path)),
    )
    charts.bars(
        out / "report.png",
        [TITLES[c] for c in cols],
        {name: [s["means"].get(c) for c in cols] for name, s in summaries.items()},
        "judge score (0-5)",
        "Video-ChatGPT judge scores",
        (0, 5),
    )
    return table
