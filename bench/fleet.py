"""Two replicas sharing a feature tier, measured side by side in one run (the `demo` model, the
transformers engine, a real redis-server and the shipped HAProxy router, all on this machine):

1. a follow-up's time to first token: from the replica's own memory (L1), from Redis on the
   other replica, and a fresh upload of the same clip (target: from Redis at most 0.2x fresh);
2. bytes per video in Redis, beside the paper's size (computed: 893 tokens x 2560 x 2 bytes);
3. requests/s of two replicas behind the router against one replica alone, 8 clients, each
   request a new file (decode and encoders every time; on 2 cores the CPU bounds both).

    python bench/fleet.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.servers import RedisServer, Router, Server  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
CLIP = ROOT / "model" / "demo" / "sample.mp4"
CLIPS = sorted(p for p in (ROOT / "tests" / "media").iterdir() if p.suffix in (".mp4", ".webm", ".mov"))


def ttft(url: str, **form) -> float:
    """Seconds to the first content chunk of a streamed answer."""
    files = {"video": (CLIP.name, form.pop("payload"))} if "payload" in form else None
    data = {"prompt": "What do you hear?", "max_tokens": "8", "stream": "true", **form}
    start = time.perf_counter()
    with httpx.stream("POST", url + "/v1/video/chat", files=files, data=data, timeout=120) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - start
    raise RuntimeError("no token came")


def upload(url: str, path: Path, nonce: bytes) -> int:
    r = httpx.post(
        url + "/v1/video/chat",
        files={"video": (path.name, path.read_bytes() + nonce)},
        data={"prompt": "What happens?", "max_tokens": "8"},
        timeout=600,
    )
    return r.status_code


def throughput(url: str, tag: str, n: int = 24) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: upload(url, CLIPS[i % len(CLIPS)], f"{tag}{i}".encode()), range(n)))
    assert codes == [200] * n, codes
    return n / (time.perf_counter() - start)


def main() -> int:
    CACHE.mkdir(exist_ok=True)
    os.environ.setdefault("AVCHAT_HOME", str(CACHE / "home"))
    redis = RedisServer(CACHE / "fleet-redis.log").start()
    env = {
        "AVCHAT_MODEL": "demo",
        "AVCHAT_ENGINE": "transformers",
        "AVCHAT_SECRET": "bench",
        "AVCHAT_FEATURE_STORE": redis.url,
    }
    replicas = [Server(env, CACHE / f"fleet-{i}.log") for i in range(2)]
    router = None
    rows = []
    try:
        for r in replicas:
            r.wait_ready(600)
        one, other = replicas
        payload = CLIP.read_bytes()
        ttft(one.url, payload=payload + b"warm-up")
        fresh = statistics.median(ttft(one.url, payload=payload + f"fresh{i}".encode()) for i in range(5))
        first = httpx.post(
            one.url + "/v1/video/chat",
            files={"video": (CLIP.name, payload)},
            data={"prompt": "?", "max_tokens": "1"},
            timeout=120,
        ).json()
        video_id = first["video_id"]
        l1 = statistics.median(ttft(one.url, video_id=video_id) for _ in range(5))
        l2 = []
        for i in range(5):  # a new replica's first look each time: drop it from the other's L1 by a restart
            if i:
                other.stop()
                other = replicas[1] = Server(env, CACHE / "fleet-1.log").wait_ready(600)
            l2.append(ttft(other.url, video_id=video_id))
        from_redis = statistics.median(l2)
        rows.append(("follow-up TTFT, L1 (same replica)", f"{l1 * 1000:.0f} ms", f"{l1 / fresh:.2f}x fresh"))
        rows.append(
            ("follow-up TTFT, Redis (other replica)", f"{from_redis * 1000:.0f} ms", f"{from_redis / fresh:.2f}x fresh")
        )
        rows.append(("fresh upload TTFT (decode + encoders)", f"{fresh * 1000:.0f} ms", "1.00x"))

        import redis as redis_py

        client = redis_py.Redis.from_url(redis.url)
        (key,) = client.keys(f"avchat:1:*:video:{video_id}")
        stored = client.strlen(key)
        paper = 893 * 2560 * 2
        rows.append(
            ("bytes per video in Redis", f"{stored / 1e6:.2f} MB (demo)", f"paper's size {paper / 1e6:.1f} MB (bf16)")
        )

        alone = throughput(one.url, "alone")
        router = Router([f"127.0.0.1:{r.port}" for r in replicas], CACHE / "fleet-router.log").wait_ready()
        both = throughput(router.url, "routed")
        rows.append(
            (
                "requests/s, 8 clients, new files",
                f"one replica {alone:.2f}",
                f"two behind the router {both:.2f} ({both / alone:.2f}x)",
            )
        )
    finally:
        if router is not None:
            router.stop()
        for r in replicas:
            r.stop()
        redis.stop()
    print(f"\n{'measurement':42s} {'value':28s} ratio")
    for name, value, ratio in rows:
        print(f"{name:42s} {value:28s} {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
