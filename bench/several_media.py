"""Several media in one conversation, measured side by side in one run (the ``demo`` model, the
transformers engine, two vendored clips, the real service on this machine):

1. one new video per request (decode, encoders, prompt, 8 tokens);
2. two new videos in one request (each decoded and encoded, one prompt with both blocks);
3. the same two again by their ``video_id`` as ``uuid`` parts (a follow-up: no decode, no
   encoder; the longer prompt's prefill only).

Each request's clips are new to the service (a different ``end`` gives a different ``video_id``),
except in 3. Prints the medians, the prompt tokens and the ratios.

    python bench/several_media.py [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.servers import Server  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
MEDIA = ROOT / "tests" / "media"
CLIPS = [MEDIA / "vllama_boat.mp4", MEDIA / "vllama_dog_barking.mp4"]


def video(clip: Path, end: float) -> dict:
    return {"type": "video_url", "video_url": {"url": f"file://{clip}", "end": end}}


def ask(url: str, parts: list[dict]) -> tuple[float, dict]:
    content = [{"type": "text", "text": "What happens in these?"}, *parts]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 8, "ignore_eos": True}
    start = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed, r.json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    CACHE.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "AVCHAT_HOME": os.environ.get("AVCHAT_HOME", str(CACHE / "home")),
        "AVCHAT_MODEL": "demo",
        "AVCHAT_ENGINE": "transformers",
        "AVCHAT_ALLOWED_LOCAL_MEDIA_PATH": str(MEDIA),
    }
    srv = Server(env, CACHE / "several-media.log")
    one, two, again = [], [], []
    try:
        srv.wait_ready(600)
        ask(srv.url, [video(CLIPS[0], 4.5)])  # warm-up (a window the runs do not use)
        for i in range(args.reps):
            end = 5 + i / 100  # a window not seen before: new features
            t, r1 = ask(srv.url, [video(CLIPS[0], end)])
            one.append(t)
            t, r2 = ask(srv.url, [video(CLIPS[0], end + 0.5), video(CLIPS[1], end + 0.5)])
            two.append(t)
            ids = [p["video_id"] for p in r2["media"]["parts"]]
            t, r3 = ask(srv.url, [{"type": "video_url", "uuid": i} for i in ids])
            again.append(t)
            print(f"rep {i + 1}/{args.reps}: {one[-1]:.2f} s, {two[-1]:.2f} s, {again[-1]:.2f} s", file=sys.stderr)
    finally:
        srv.stop()
    tokens = [r["usage"]["prompt_tokens"] for r in (r1, r2, r3)]
    a, b, c = (statistics.median(x) for x in (one, two, again))
    print("| request | prompt tokens | median s | ratio |\n|---|---|---|---|")
    print(f"| one new video | {tokens[0]} | {a:.2f} | 1.00x |")
    print(f"| two new videos | {tokens[1]} | {b:.2f} | {b / a:.2f}x one |")
    print(f"| the two again, by uuid | {tokens[2]} | {c:.2f} | {c / b:.2f}x two new |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
