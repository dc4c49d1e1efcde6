"""The two generation engines on tiny, side by side in one run: vLLM (its CPU build here) vs the
transformers engine, through the real service. The video is uploaded once and every request
reuses its cached features (``video_id``), so this measures generation: 1 stream at a time and
8 concurrent streams, tokens per second and time to first token (TTFT), as ratios.

    python bench/engines.py [--tokens 64] [--requests 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

CLIP = ROOT / "tests" / "media" / "vllama_dog_barking.mp4"


def stream(url: str, video_id: str, tokens: int, seed: int) -> tuple[float, float, int]:
    """(TTFT, total seconds, completion tokens) of one streamed answer."""
    data = {
        "video_id": video_id,
        "prompt": "Describe everything.",
        "max_tokens": str(tokens),
        "stream": "true",
        "temperature": "1.0",
        "seed": str(seed),
        "stream_options": json.dumps({"include_usage": True}),
    }
    t0 = time.perf_counter()
    ttft, count = None, 0
    with httpx.stream("POST", url + "/v1/video/chat", data=data, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - t0
    return (ttft or total), total, count


def measure(engine: str, tokens: int, requests: int, tmp: Path) -> dict:
    from tests.servers import Server

    srv = Server(
        {"AVCHAT_ENGINE": engine, "AVCHAT_MAX_CONCURRENCY": "8", "VLLM_CPU_KVCACHE_SPACE": "1"}, tmp / f"{engine}.log"
    )
    try:
        srv.wait_ready(300)
        with CLIP.open("rb") as f:
            video_id = httpx.post(
                srv.url + "/v1/video/chat",
                files={"video": (CLIP.name, f)},
                data={"prompt": "hi", "max_tokens": "2"},
                timeout=300,
            ).json()["video_id"]
        stream(srv.url, video_id, 4, 0)  # warm-up
        single = [stream(srv.url, video_id, tokens, i) for i in range(requests)]
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            many = list(pool.map(lambda i: stream(srv.url, video_id, tokens, 100 + i), range(requests)))
        wall8 = time.perf_counter() - start
    finally:
        srv.stop()
    return {
        "tps_1": sum(c for _, _, c in single) / sum(t for _, t, _ in single),
        "ttft_1": statistics.median(t for t, _, _ in single),
        "tps_8": sum(c for _, _, c in many) / wall8,
        "ttft_8": statistics.median(t for t, _, _ in many),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="avchat-engines-"))
    results = {e: measure(e, args.tokens, args.requests, tmp) for e in ("transformers", "vllm")}
    t, v = results["transformers"], results["vllm"]
    print(f"\ntiny, {args.requests} requests x {args.tokens} tokens, features cached (generation only)\n")
    print("| streams | metric | transformers | vllm | vllm / transformers |")
    print("|---|---|---|---|---|")
    for n in ("1", "8"):
        print(f"| {n} | tokens/s | {t['tps_' + n]:.1f} | {v['tps_' + n]:.1f} | {v['tps_' + n] / t['tps_' + n]:.2f} |")
        print(
            f"| {n} | TTFT p50 (s) | {t['ttft_' + n]:.3f} | {v['ttft_' + n]:.3f} | "
            f"{v['ttft_' + n] / t['ttft_' + n]:.2f} |"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs = range(2)
        ax.bar([x - 0.2 for x in xs], [t["tps_1"], t["tps_8"]], 0.4, label="transformers")
        ax.bar([x + 0.2 for x in xs], [v["tps_1"], v["tps_8"]], 0.4, label="vllm")
        ax.set_xticks(list(xs), ["1 stream", "8 streams"])
        ax.set_ylabel("generated tokens / s")
        ax.set_title("Engines on tiny (CPU)")
        ax.legend()
        fig.tight_layout()
        out = ROOT / "bench" / ".cache" / "engines.png"
        out.parent.mkdir(exist_ok=True)
        fig.savefig(out, dpi=120)
        print(f"plot: {out}")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
