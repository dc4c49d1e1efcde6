"""The service edge under hostile clients, measured side by side in one run against the real
service (tiny model, transformers engine, on this machine):

1. a normal request alone, and with 10 slow uploaders connected (1 byte every 0.5 s);
2. the time to refuse a request with a 1 MB stop list, against a normal small request;
3. the time and the server's memory change to refuse an unauthenticated 200 MB body;
4. p50 / p95 latency of 32 concurrent real uploads (the 8 real clips, 4 times, each a new
   file), and how many got an error.

    python bench/service_edge.py
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from tests.servers import Server  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
MEDIA = ROOT / "tests" / "media"
KEY = "bench-key"
H = {"Authorization": f"Bearer {KEY}"}


def slow_uploader(port: int, stop: threading.Event) -> None:
    head = (
        f"POST /v1/video/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: "
        "multipart/form-data; boundary=bb\r\nContent-Length: 100000000\r\n\r\n--bb\r\nContent-Disposition: "
        'form-data; name="video"; filename="v.mp4"\r\n\r\n'
    )
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head.encode())
        while not stop.is_set():
            try:
                s.sendall(b"\0")
            except OSError:
                return
            time.sleep(0.5)


def ask(url: str, path: Path, extra: bytes = b"", **fields) -> tuple[int, float]:
    data = {"prompt": "What happens?", "max_tokens": "8", **fields}
    start = time.perf_counter()
    r = httpx.post(
        url + "/v1/video/chat",
        headers=H,
        files={"video": (path.name, path.read_bytes() + extra)},
        data=data,
        timeout=600,
    )
    return r.status_code, time.perf_counter() - start


def main() -> int:
    os.environ.setdefault("AVCHAT_HOME", str(CACHE / "home"))
    srv = Server(
        {
            "AVCHAT_ENGINE": "transformers",
            "AVCHAT_API_KEYS": KEY,
            "AVCHAT_MAX_QUEUE": "64",
            "AVCHAT_MAX_CONCURRENCY": "4",
        },
        CACHE / "service-edge.log",
    )
    rows = []
    try:
        srv.wait_ready(600)
        clip = MEDIA / "vllama_dog_barking.mp4"
        ask(srv.url, clip)  # warm-up
        alone = statistics.median(ask(srv.url, clip, str(i).encode())[1] for i in range(3))
        stop = threading.Event()
        threads = [threading.Thread(target=slow_uploader, args=(srv.port, stop)) for _ in range(10)]
        for t in threads:
            t.start()
        time.sleep(1)
        status, crowded = ask(srv.url, clip, b"crowded")
        stop.set()
        rows.append(
            (
                "normal request, alone vs 10 slow uploaders",
                f"{alone:.2f} s",
                f"{crowded:.2f} s ({status})",
                f"{crowded / alone:.2f}x",
            )
        )

        small = httpx.post(
            srv.url + "/v1/chat/completions",
            headers=H,
            timeout=60,
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        )
        start = time.perf_counter()
        big = httpx.post(
            srv.url + "/v1/chat/completions",
            headers=H,
            timeout=60,
            json={"messages": [{"role": "user", "content": "hi"}], "stop": "x" * (1 << 20)},
        )
        refused = time.perf_counter() - start
        rows.append(
            (
                "1 MB stop list refused",
                f"{small.elapsed.total_seconds():.3f} s (a normal tiny request)",
                f"{refused:.3f} s ({big.status_code})",
                f"{refused / small.elapsed.total_seconds():.2f}x",
            )
        )

        server = psutil.Process(srv.proc.pid)
        before = server.memory_info().rss
        peak = [before]
        watching = threading.Event()

        def watch():
            while not watching.is_set():
                peak.append(server.memory_info().rss)
                time.sleep(0.02)

        w = threading.Thread(target=watch)
        w.start()
        chunk = b"{" * (1 << 20)
        start = time.perf_counter()
        r = httpx.post(
            srv.url + "/v1/chat/completions",
            content=(chunk for _ in range(200)),
            headers={"content-type": "application/json"},
            timeout=60,
        )
        took = time.perf_counter() - start
        watching.set()
        w.join()
        rows.append(
            (
                "unauthenticated 200 MB body",
                "-",
                f"{took:.2f} s ({r.status_code})",
                f"server memory +{(max(peak) - before) / 2**20:.0f} MiB",
            )
        )

        clips = sorted(p for p in MEDIA.iterdir() if p.suffix not in (".tsv", ".md"))
        jobs = [(clips[i % len(clips)], f"run{i}".encode()) for i in range(32)]
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda job: ask(srv.url, *job), jobs))
        latencies = sorted(t for _, t in results)
        errors = sum(1 for s, _ in results if s != 200)
        p95 = latencies[int(0.95 * len(latencies)) - 1]
        rows.append(
            (
                "32 concurrent real uploads",
                f"p50 {statistics.median(latencies):.1f} s",
                f"p95 {p95:.1f} s",
                f"{errors} errors",
            )
        )
    finally:
        srv.stop()
    print(f"\n{'measurement':48s} {'baseline':32s} {'under attack / result':26s} ratio")
    for name, a, b, ratio in rows:
        print(f"{name:48s} {a:32s} {b:26s} {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
