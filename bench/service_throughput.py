"""Service throughput and time to first token (TTFT) on the tiny model, side by side in one run:

* baseline: the same requests answered one at a time by calling the model in-process
  (decode -> processor -> prompt embeddings -> generate);
* service: N concurrent streaming clients against the real uvicorn server on 127.0.0.1;
* cached follow-up: TTFT of a second question by ``video_id`` vs. the first question.

Targets on tiny: service throughput with 8 clients >= 1.5x the baseline; cached follow-up TTFT
<= 0.2x the first question's.

    python bench/service_throughput.py [--clients 8] [--requests 16] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from clips import CLIPS, MEDIA  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def workload(n: int, tmp: Path) -> list[Path]:
    """n distinct files (real clips with a unique trailing byte string, so no cache hits)."""
    out = []
    for i in range(n):
        src = MEDIA / CLIPS[i % len(CLIPS)]
        dst = tmp / f"{i:03d}{src.suffix}"
        dst.write_bytes(src.read_bytes() + f"bench-{i}-{time.time()}".encode())
        out.append(dst)
    return out


def baseline(paths: list[Path], max_tokens: int) -> tuple[float, list[float]]:

    from model import AVChatModel, pipeline
    from model.generation import generate_text

    model = AVChatModel.from_pretrained("tiny")
    ttfts = []
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    for path in paths:
        t0 = time.perf_counter()
        _, embeddings = pipeline.embed_media(model, [str(path)])[0]
        prompt = pipeline.prompt(model.processor, [{"role": "user", "content": "What happens?"}], embeddings)
        embeds = pipeline.prompt_embeds(model, prompt, embeddings)
        deltas = generate_text(model, embeds, max_tokens, temperature=1.0, seed=0)
        next(deltas)
        ttfts.append(time.perf_counter() - t0)
        for _ in deltas:
            pass
    wall = time.perf_counter() - start
    return wall, ttfts, (_cpu_seconds() - cpu0) / wall


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def stream_one(url: str, path: Path | None, max_tokens: int, video_id: str | None = None) -> tuple[float, str]:
    data = {"prompt": "What happens?", "max_tokens": str(max_tokens), "stream": "true", "temperature": "1.0"}
    files = None
    if video_id:
        data["video_id"] = video_id
    else:
        files = {"video": (path.name, path.open("rb"))}
    t0 = time.perf_counter()
    ttft, vid = None, None
    with httpx.stream("POST", url + "/v1/video/chat", data=data, files=files, timeout=300) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            vid = chunk.get("video_id") or vid
            if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
    return (ttft if ttft is not None else time.perf_counter() - t0), vid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()

    from tests.servers import Server

    tmp = Path(tempfile.mkdtemp(prefix="avchat-bench-"))
    home = Path(os.environ.get("AVCHAT_HOME", Path.home() / ".cache" / "avchat"))
    server = Server(
        {
            "AVCHAT_HOME": str(home),
            "AVCHAT_ENGINE": os.environ.get("AVCHAT_ENGINE", "transformers"),
            "AVCHAT_MAX_CONCURRENCY": str(args.clients),
        },
        tmp / "server.log",
    )
    try:
        server.wait_ready()
        base_wall, base_ttft, base_cores = baseline(workload(args.requests, tmp), args.max_tokens)
        paths = workload(args.requests, tmp)
        stream_one(server.url, paths[0], 2)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda p: stream_one(server.url, p, args.max_tokens), paths[1:]))
        svc_wall = time.perf_counter() - start
        svc_ttft = [r[0] for r in results]
        n_svc = len(paths) - 1

        first, follow = [], []
        for path in workload(4, tmp):
            t, vid = stream_one(server.url, path, args.max_tokens)
            first.append(t)
            follow.append(stream_one(server.url, None, args.max_tokens, video_id=vid)[0])
        engine = httpx.get(server.url + "/v1/models").json()["data"][0]["engine"]
    finally:
        server.stop()

    base_tp, svc_tp = args.requests / base_wall, n_svc / svc_wall
    print(f"\nengine: {engine}; {args.requests} requests, {args.max_tokens} tokens each; clients: {args.clients}\n")
    print("| run | requests/s | TTFT p50 (s) | TTFT p95 (s) |")
    print("|---|---|---|---|")
    print(f"| in-process, one at a time | {base_tp:.2f} | {pct(base_ttft, 50):.2f} | {pct(base_ttft, 95):.2f} |")
    print(f"| service, {args.clients} clients | {svc_tp:.2f} | {pct(svc_ttft, 50):.2f} | {pct(svc_ttft, 95):.2f} |")
    print(f"| first question (service, alone) | | {statistics.median(first):.3f} | |")
    print(f"| cached follow-up by video_id | | {statistics.median(follow):.3f} | |")
    tp_ratio = svc_tp / base_tp
    cache_ratio = statistics.median(follow) / statistics.median(first)
    cores = os.cpu_count() or 1
    print(
        f"\nthe in-process baseline keeps {base_cores:.2f} of {cores} cores busy, so running requests side by side "
        f"can add at most {cores / base_cores:.2f}x on this machine"
    )
    print(f"throughput ratio (service / in-process): {tp_ratio:.2f}  (target >= 1.5)")
    print(f"TTFT ratio (cached follow-up / first question): {cache_ratio:.3f}  (target <= 0.2)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
        a.bar(["in-process\nsequential", f"service\n{args.clients} clients"], [base_tp, svc_tp], color=["grey", "C0"])
        a.set_ylabel("requests / s")
        a.set_title(f"throughput ({tp_ratio:.2f}x)")
        b.bar(
            ["first question", "cached follow-up"],
            [statistics.median(first), statistics.median(follow)],
            color=["grey", "C2"],
        )
        b.set_ylabel("TTFT p50 (s)")
        b.set_title(f"time to first token ({cache_ratio:.2f}x)")
        fig.tight_layout()
        out = ROOT / "bench" / ".cache" / "service_throughput.png"
        out.parent.mkdir(exist_ok=True)
        fig.savefig(out, dpi=120)
        print(f"plot: {out}")
    except ImportError:
        pass
    return 0 if tp_ratio >= 1.5 and cache_ratio <= 0.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
