"""Batch inference, measured side by side in one run (the `demo` model, the transformers engine,
the vendored clips, all on this machine):

1. lines/s of the same batch lines sent one by one to the running service and answered by
   ``python -m service.batch`` (four in flight, the default; its wall time includes loading the
   model), each line a clip not seen before (its window differs, so no cached features);
2. an interactive follow-up's time to first token on the service, quiet and while a batch of
   new clips runs through the Batch API beside it (the factor the README states).

    python bench/batch.py [--lines 16]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import openai  # noqa: E402

from tests.servers import Server  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
MEDIA = ROOT / "tests" / "media"
CLIPS = sorted(p for p in MEDIA.iterdir() if p.suffix in (".mp4", ".webm", ".mov"))
CLIP = ROOT / "model" / "demo" / "sample.mp4"


def lines(n: int, tag: str, offset: int = 0) -> list[str]:
    """``n`` batch lines, each over a clip made unique by its window (so nothing is cached)."""
    out = []
    for i in range(n):
        clip = CLIPS[i % len(CLIPS)]
        part = {"type": "video_url", "video_url": {"url": f"file://{clip}", "start": 0, "end": 1 + (i + offset) / 100}}
        content = [{"type": "text", "text": "What happens?"}, part]
        body = {"max_tokens": 8, "messages": [{"role": "user", "content": content}]}
        line = {"custom_id": f"{tag}{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        out.append(json.dumps(line))
    return out


def one_by_one(url: str, batch: list[str]) -> float:
    start = time.perf_counter()
    for text in batch:
        r = httpx.post(url + "/v1/chat/completions", json=json.loads(text)["body"], timeout=600)
        assert r.status_code == 200, r.text
    return len(batch) / (time.perf_counter() - start)


def command_rate(path: Path, concurrency: int, env: dict) -> float:
    out = path.with_suffix(f".out{concurrency}.jsonl")
    out.unlink(missing_ok=True)
    n = len(path.read_text().splitlines())
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "service.batch", "-i", str(path), "-o", str(out), "--concurrency", str(concurrency)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stderr=subprocess.DEVNULL)
    return n / (time.perf_counter() - start)


def ttft(url: str, video_id: str) -> float:
    data = {"prompt": "What do you hear?", "max_tokens": "8", "stream": "true", "video_id": video_id}
    start = time.perf_counter()
    with httpx.stream("POST", url + "/v1/video/chat", data=data, timeout=300) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - start
    raise RuntimeError("no token came")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=16)
    args = ap.parse_args()
    CACHE.mkdir(exist_ok=True)
    env = {**os.environ, "AVCHAT_HOME": os.environ.get("AVCHAT_HOME", str(CACHE / "home")), "AVCHAT_MODEL": "demo"}
    env["AVCHAT_ENGINE"] = "transformers"
    rows = []

    data = CACHE / "batch-data"
    served = {**env, "AVCHAT_DATA_DIR": str(data), "AVCHAT_ALLOWED_LOCAL_MEDIA_PATH": str(MEDIA)}
    srv = Server(served, CACHE / "batch.log")
    try:
        srv.wait_ready(600)
        r = httpx.post(srv.url + "/v1/video/chat", files={"video": (CLIP.name, CLIP.read_bytes())},
                       data={"prompt": "Hi", "max_tokens": "2"}, timeout=300)  # fmt: skip
        video_id = r.json()["video_id"]
        one = one_by_one(srv.url, lines(args.lines, "s", offset=0))
        quiet = [ttft(srv.url, video_id) for _ in range(6)]
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        body = io.BytesIO(("\n".join(lines(args.lines, "b", offset=args.lines)) + "\n").encode())
        upload = client.files.create(file=("in.jsonl", body), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        busy = []
        while client.batches.retrieve(batch.id).status in ("validating", "in_progress") and len(busy) < 12:
            busy.append(ttft(srv.url, video_id))
            time.sleep(0.5)
        while client.batches.retrieve(batch.id).status not in ("completed", "failed", "cancelled"):
            time.sleep(1)
        done = client.batches.retrieve(batch.id)
    finally:
        srv.stop()
    path = CACHE / "batch-in.jsonl"
    path.write_text("\n".join(lines(args.lines, "c", offset=2 * args.lines)) + "\n")
    four = command_rate(path, 4, env)
    rows.append(
        ("lines/s", f"{one:.2f} one by one to the service", f"{four:.2f} python -m service.batch", f"{four / one:.2f}x")
    )
    q, b = statistics.median(quiet), statistics.median(busy)
    rows.append(("follow-up TTFT, s (median)", f"{q:.3f} quiet", f"{b:.3f} with a batch running", f"{b / q:.2f}x"))
    worst = (max(quiet), max(busy))
    rows.append(
        (
            "follow-up TTFT, s (max)",
            f"{worst[0]:.3f} quiet",
            f"{worst[1]:.3f} with a batch running",
            f"{worst[1] / worst[0]:.2f}x",
        )
    )
    counts = done.request_counts
    print(f"batch: {done.status}, {counts.completed} completed, {counts.failed} failed of {counts.total}; "
          f"{len(busy)} follow-ups measured while it ran")  # fmt: skip
    print("| measure | A | B | B/A |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
