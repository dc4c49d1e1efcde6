"""Batch inference in-process, like ``vllm run-batch``: OpenAI batch lines in, answers out.

    python -m service.batch -i requests.jsonl -o answers.jsonl [--model demo] [--concurrency 4]

Each input line is an OpenAI batch line (``custom_id``, ``method``, ``url`` =
/v1/chat/completions, ``body``) whose media come as the chat route takes them (``data:``,
``file://`` under ``AVCHAT_ALLOWED_LOCAL_MEDIA_PATH`` (default here: every file), allowed
``http(s)``). Each output line is the Batch API's (``custom_id``, ``response`` with its
``status_code`` and ``body``, or ``error``), written as each answer is ready: in completion
order, matched by ``custom_id``. A rerun (more lines added, or after a crash) keeps every answer
already in the output (a torn last line is dropped) and answers only the rest. Progress, with
lines/s and the time left, goes to stderr. The same settings as the service (``AVCHAT_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from .batches import Interrupted, LineError, custom_id_of, parse_line, run_request


def finished(out: Path) -> set[str]:
    """The keys already answered in ``out``, after dropping a torn last line."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):  # a line cut off by a crash: not an answer
        with open(out, "r+b") as f:
            f.truncate(cut)
    keys = set()
    for line in data[:cut].splitlines():
        try:
            keys.add(json.loads(line)["key"])
        except (ValueError, KeyError, TypeError):
            continue
    return keys


class Progress:
    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.monotonic()

    def step(self) -> None:
        self.done += 1
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate else 0
        end = "\n" if self.done == self.total else ""
        print(f"\r{self.done}/{self.total} lines, {rate:.2f} lines/s, {left:.0f} s left ", end=end, file=sys.stderr)


async def run(args) -> int:
    from .loading import load
    from .settings import Settings

    overrides = {"model": args.model} if args.model else {}
    if not os.environ.get("AVCHAT_ALLOWED_LOCAL_MEDIA_PATH"):
        overrides["allowed_local_media_path"] = "/"  # in-process: the caller's own files
    settings = Settings(**overrides)
    lines = [line for line in Path(args.input).read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(args.output)
    done = finished(out)
    todo = [(i, line) for i, line in enumerate(lines) if _key(i, line) not in done]
    print(f"{len(lines)} lines, {len(lines) - len(todo)} already answered in {out}", file=sys.stderr)
    if not todo:
        return 0
    parts = await load(settings)
    progress, seen, gate = Progress(len(todo)), set(), asyncio.Semaphore(max(1, args.concurrency))
    failed = 0
    with open(out, "a", encoding="utf-8") as sink:

        async def one(i: int, text: str) -> None:
            nonlocal failed
            async with gate:
                key = _key(i, text)
                try:
                    custom_id, body = parse_line(text, i, seen)
                    seen.add(custom_id)
                    status, payload = await run_request(parts.chat, settings, "", {**body, "stream": False})
                    row = {"custom_id": custom_id, "response": {"status_code": status, "body": payload}, "error": None}
                except LineError as exc:
                    status, row = 400, {"custom_id": None, "response": None, "error": {"message": str(exc)}}
                failed += status != 200
                sink.write(json.dumps({"key": key, **row}) + "\n")
                sink.flush()
                progress.step()

        try:
            await asyncio.gather(*(one(i, text) for i, text in todo))
        except Interrupted:
            print("\nstopped: rerun the same command to answer the rest", file=sys.stderr)
            return 1
        finally:
            await parts.engine.close()
            parts.worker.close()
    print(f"{len(todo)} answered ({failed} failed) into {out}", file=sys.stderr)
    return 0


def _key(i: int, text: str) -> str:
    """What identifies a line across reruns: its custom_id, else its line number."""
    return custom_id_of(text) or f"#{i + 1}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.batch", description=__doc__.splitlines()[0])
    p.add_argument("-i", "--input", required=True, help="OpenAI batch lines (JSON lines)")
    p.add_argument("-o", "--output", required=True, help="answers, one JSON line each (appended; resumable)")
    p.add_argument("--model", default=None, help="checkpoint folder or preset (default: AVCHAT_MODEL, else demo)")
    p.add_argument("--concurrency", type=int, default=4, help="lines in flight at once (default 4)")
    args = p.parse_args(argv)
    if not os.path.exists(args.input):
        print(f"error: {args.input}: no such file", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
