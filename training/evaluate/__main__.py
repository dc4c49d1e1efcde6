"""Command line of the evaluation: ``python -m training.evaluate predict | judge | report | mcq``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Video-ChatGPT-style evaluation: predict, judge, report; multiple-choice benchmarks: mcq.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="answer a benchmark's questions")
    pr.add_argument(
        "--questions",
        required=True,
        help="generic_qa.json, temporal_qa.json, consistency_qa.json or an audio-visual JSON-lines file",
    )
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
    mc = sub.add_parser("mcq", help="multiple-choice benchmarks: answers, accuracy per task and split, chart")
    mc.add_argument(
        "--questions",
        required=True,
        help="WorldSense's worldsense_qa.json, AV-SpeakerBench's questions (JSON or JSON lines), "
        "or AVHBench's json/ folder (or one of its files)",
    )
    mc.add_argument("--videos", help="folder of the videos the questions name")
    mc.add_argument("--layout", default="auto", choices=["auto", "worldsense", "av-speakerbench", "avhbench"])
    mc.add_argument(
        "--splits",
        default=None,
        help="comma-separated, of audio-visual, audio-only, visual-only (default: all three for "
        "AV-SpeakerBench, audio-visual for the others)",
    )
    msrc = mc.add_mutually_exclusive_group(required=True)
    msrc.add_argument("--base-url", help="a running service (our SDK; $AVCHAT_API_KEY for its key)")
    msrc.add_argument("--checkpoint", help="answer in-process from a checkpoint folder or preset")
    mc.add_argument("--max-tokens", type=int, default=16, help="a letter needs few; room for 'The answer is B'")
    mc.add_argument("--concurrency", type=int, default=4, help="videos in flight at once")
    mc.add_argument("--device", default="cpu")
    mc.add_argument("--out", required=True, help="folder: predictions.jsonl (a rerun continues it) and the report")
    rp = sub.add_parser("report", help="tables and a chart of judged runs, side by side")
    rp.add_argument(
        "--run",
        action="append",
        required=True,
        help="NAME=PATH, PATH a judged file or a folder of *.judged.jsonl (repeat per run)",
    )
    rp.add_argument("--out", required=True)
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _mcq(args) -> int:
    if not os.path.exists(args.questions):
        return _fail(f"--questions {args.questions}: no such file or folder")
    if args.videos and not os.path.isdir(args.videos):
        return _fail(f"--videos {args.videos}: no such folder")
    from .mcq import answer_all, report
    from .mcq_layouts import DEFAULT_SPLITS, SPLITS, LayoutError, expand, load

    try:
        layout, items = load(args.questions, args.layout)
    except LayoutError as exc:
        return _fail(str(exc))
    splits = [s.strip() for s in args.splits.split(",")] if args.splits else DEFAULT_SPLITS[layout]
    if unknown := [s for s in splits if s not in SPLITS]:
        return _fail(f"--splits: {', '.join(unknown)} unknown (use {', '.join(SPLITS)})")
    from .predict import LocalAnswerer, ServiceAnswerer

    answerer = (
        ServiceAnswerer(args.base_url, os.environ.get("AVCHAT_API_KEY"), args.max_tokens, None)
        if args.base_url
        else LocalAnswerer(args.checkpoint, args.max_tokens, None, args.device)
    )
    out = Path(args.out)
    samples = expand(items, splits)
    print(f"mcq: {layout}, {len(items)} questions x {len(splits)} splits ({', '.join(splits)})")
    summary = answer_all(
        samples, Path(args.videos) if args.videos else None, answerer, out / "predictions.jsonl", args.concurrency
    )
    print(report(out / "predictions.jsonl", out))
    if summary["samples"] and not summary["answered"]:
        return _fail("no question could be answered (see the missing and failed videos above)", 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "predict":
        if not os.path.exists(args.questions):
            return _fail(f"--questions {args.questions}: no such file")
        if args.videos and not os.path.isdir(args.videos):
            return _fail(f"--videos {args.videos}: no such folder")
        from .predict import LocalAnswerer, ServiceAnswerer, predict
        from .questions import load_questions

        modalities = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
        answerer = (
            ServiceAnswerer(args.base_url, os.environ.get("AVCHAT_API_KEY"), args.max_tokens, modalities)
            if args.base_url
            else LocalAnswerer(args.checkpoint, args.max_tokens, modalities, args.device)
        )
        summary = predict(
            load_questions(args.questions),
            Path(args.videos) if args.videos else None,
            answerer,
            Path(args.out),
            args.concurrency,
        )
        if summary["questions"] and not summary["answered"]:
            return _fail("no question could be answered (see the missing and failed videos above)", 1)
        return 0
    if args.command == "judge":
        if not os.path.exists(args.predictions):
            return _fail(f"--predictions {args.predictions}: no such file")
        from .judge import Judge, JudgeCache, JudgeUnreachable, judge

        key = os.environ.get("JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        out = Path(args.out)
        cache = JudgeCache(Path(args.cache) if args.cache else out.with_name(out.stem + ".cache.jsonl"))
        try:
            done = judge(
                Path(args.predictions), Judge(args.judge_base_url, args.judge_model, key, cache), out, args.concurrency
            )
        except JudgeUnreachable as exc:
            return _fail(f"{exc}; the scores so far are kept, rerun to continue", 3)
        if done["unparsed"]:
            return _fail(
                f"{done['unparsed']} of the judge's ({args.judge_model}) answers held no score, after 3 asks each "
                f"(the last: {done['last_unparsed']!r:.200}); they are not written: check that the model answers "
                "in the prompt's format, then rerun (scores already written are kept)",
                4,
            )
        return 0
    if args.command == "mcq":
        return _mcq(args)
    runs: dict[str, list[Path]] = {}
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep:
            return _fail(f"--run takes NAME=PATH, got {spec!r}")
        path_ = Path(path)
        files = sorted(path_.glob("*.judged.jsonl")) if path_.is_dir() else [path_]
        if not files or not all(f.exists() for f in files):
            return _fail(f"--run {spec}: no judged files there")
        runs[name] = files
    from .report import report

    print(report(runs, Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
