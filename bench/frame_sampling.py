"""Frame sampling and the media budgets, measured side by side in one run.

1. Speed: our sampler (``model.pipeline.decode``, video only: packet scan + one decode pass,
   100 frames at 384 px) against decoding the whole stream (``ffmpeg -i clip -f null -``), on
   720p H.264 clips (60 s, and 10 min with a keyframe every 2 s) and on the odd-timing corpus
   (MPEG-TS with its start offset, Matroska with audio before video, variable frame rate, an
   edit list, open GOP). Targets: <= 1.3x the whole decode on the 60 s clip, <= 0.25x on the
   10 min clip.
2. The decode bomb (about 200 kB of H.264 that decodes to 300 frames of 8192 x 8192): the time
   to refuse it (target < 2 s), against the time ffmpeg takes to decode it.
3. The event loop: /health latency of the real service while it probes a file with a million
   packets (target < 100 ms), against /health when idle.

Clips are made with ffmpeg and cached under bench/.cache; a table (and a PNG chart) is printed.

    python bench/frame_sampling.py [--repeat 3] [--skip-long] [--skip-service]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import seconds  # noqa: E402  (bench/timing.py)

from model.ffmpeg import ffmpeg_exe  # noqa: E402
from model.media import MediaLimitError  # noqa: E402
from model.pipeline import decode  # noqa: E402
from model.presets import tiny_config  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
CONFIG = tiny_config()  # 100 frames at 384 px: the real sampling geometry


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


def cached(name: str, *args: str) -> Path:
    path = CACHE / name
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"making {name} ...", flush=True)
        tmp = path.with_name("tmp-" + name)
        ffmpeg(*args, str(tmp))
        tmp.rename(path)
    return path


def hd(seconds: int, name: str, fmt: tuple[str, ...] = ()) -> Path:
    return cached(
        name,
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size=1280x720:rate=30:duration={seconds}",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=300:duration={seconds}",
        "-vf",
        "noise=alls=12:allf=t",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-b:v",
        "4M",
        "-maxrate",
        "4M",
        "-bufsize",
        "8M",
        "-g",
        "60",
        "-keyint_min",
        "60",
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        *fmt,
    )


def corpus(long: bool) -> list[tuple[str, Path, float | None]]:
    """(name, clip, target ratio to a whole decode)."""
    clip60 = hd(60, "hd-60s.mp4")
    clips = [("720p 60 s", clip60, 1.3)]
    if long:
        clips.append(("720p 10 min, GOP 2 s", hd(600, "hd-600s.mp4"), 0.25))
    clips += [
        ("MPEG-TS (start 1.4 s)", cached("odd.ts", "-i", str(clip60), "-c", "copy", "-f", "mpegts"), None),
        (
            "Matroska, audio first",
            cached(
                "odd-audio-first.mkv",
                "-i",
                str(clip60),
                "-itsoffset",
                "-0.5",
                "-i",
                str(clip60),
                "-map",
                "0:v",
                "-map",
                "1:a",
                "-c:v",
                "copy",
                "-c:a",
                "libopus",
            ),
            None,
        ),
        ("edit list (mid-GOP cut)", cached("odd-edit-list.mp4", "-ss", "7.3", "-i", str(clip60), "-c", "copy"), None),
        (
            "variable frame rate",
            cached(
                "odd-vfr.mkv",
                "-i",
                str(clip60),
                "-vf",
                "setpts='if(lt(T,30),PTS,PTS*2)'",
                "-fps_mode",
                "vfr",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-an",
            ),
            None,
        ),
        (
            "open GOP",
            cached(
                "odd-open-gop.mp4",
                "-i",
                str(clip60),
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-x264-params",
                "open-gop=1",
                "-g",
                "60",
                "-an",
            ),
            None,
        ),
    ]
    return clips


def whole_decode(path: Path) -> None:
    subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-threads",
            "2",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-f",
            "null",
            "-",
        ],
        check=True,
    )


def speed(args) -> list[tuple]:
    rows = []
    for name, path, target in corpus(not args.skip_long):
        frames = decode(str(path), CONFIG, ["video"]).frames
        whole = seconds(lambda p=path: whole_decode(p), args.repeat)
        ours = seconds(lambda p=path: decode(str(p), CONFIG, ["video"]), args.repeat)
        ok = "" if target is None else ("yes" if ours / whole <= target else "NO")
        rows.append((name, frames.mode, len(frames.frames), whole, ours, ours / whole, target, ok))
        print(
            f"{name:26s} {frames.mode:8s} {len(frames.frames):3d} frames  whole {whole:6.2f} s  ours {ours:6.2f} s"
            f"  ratio {ours / whole:5.2f}" + (f" (target <= {target}: {ok})" if target else ""),
            flush=True,
        )
    return rows


def bomb(args) -> tuple[float, float]:
    path = cached(
        "bomb-8192.mp4",
        "-f",
        "lavfi",
        "-i",
        "color=c=black:size=8192x8192:rate=25",
        "-frames:v",
        "300",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
    )
    start = time.perf_counter()
    try:
        decode(str(path), CONFIG, ["video"])
        raise SystemExit("the decode bomb was not refused")
    except MediaLimitError:
        refused = time.perf_counter() - start
    decoding = seconds(lambda: whole_decode(path), 1) if args.repeat else 0.0
    print(
        f"decode bomb ({path.stat().st_size / 1e3:.0f} kB, 300 x 8192x8192): refused in {refused:.2f} s "
        f"(target < 2 s); ffmpeg takes {decoding:.1f} s to decode it",
        flush=True,
    )
    return refused, decoding


def health_latency(args) -> tuple[float, float, float]:
    """Max /health latency, idle and while the service probes a million-packet file."""
    import httpx

    from tests.servers import Server

    packets = cached(
        "million-packets.mkv",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000:samples_per_frame=8:duration=166.7",
        "-c:a",
        "pcm_s16le",
    )
    home = CACHE / "home"
    srv = Server(
        {"AVCHAT_HOME": str(home), "AVCHAT_ENGINE": "transformers", "AVCHAT_MAX_PACKETS": "2000000"},
        CACHE / "health-server.log",
    )
    try:
        srv.wait_ready(600)

        def poll(stop: threading.Event) -> list[float]:
            times = []
            with httpx.Client(timeout=30) as client:  # one kept-alive connection: the server's time, not TCP's
                while not stop.is_set():
                    t = time.perf_counter()
                    client.get(srv.url + "/health")
                    times.append(time.perf_counter() - t)
                    time.sleep(0.01)
            return times

        stop, idle = threading.Event(), []
        t = threading.Thread(target=lambda: idle.extend(poll(stop)))
        t.start()
        time.sleep(2)
        stop.set()
        t.join()
        stop, busy = threading.Event(), []
        t = threading.Thread(target=lambda: busy.extend(poll(stop)))
        t.start()
        start = time.perf_counter()
        with open(packets, "rb") as f:
            r = httpx.post(
                srv.url + "/v1/video/chat",
                files={"video": ("p.mkv", f)},
                data={"prompt": "?", "max_tokens": "1"},
                timeout=600,
            )
        took = time.perf_counter() - start
        stop.set()
        t.join()
        print(
            f"/health while probing a 1M-packet file ({packets.stat().st_size / 1e6:.0f} MB, answered "
            f"{r.status_code} in {took:.1f} s): max {max(busy) * 1000:.0f} ms, median "
            f"{statistics.median(busy) * 1000:.1f} ms; idle max {max(idle) * 1000:.0f} ms (target < 100 ms)",
            flush=True,
        )
        return max(idle), max(busy), took
    finally:
        srv.stop()


def chart(rows, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = [r[0] for r in rows]
    ax.barh(names, [r[5] for r in rows], color=["#3a7" if r[7] != "NO" else "#c33" for r in rows])
    for i, r in enumerate(rows):
        if r[6]:
            ax.plot([r[6], r[6]], [i - 0.4, i + 0.4], color="black")
        ax.text(r[5] + 0.01, i, f"{r[5]:.2f}", va="center", fontsize=8)
    ax.set_xlabel("our sampler / whole-stream decode (lower is faster; bars: targets)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"chart: {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-long", action="store_true", help="skip the 10-minute clip")
    p.add_argument("--skip-service", action="store_true", help="skip the /health measurement")
    p.add_argument("--only", choices=["speed", "bomb", "health"], default=None, help="run one part")
    args = p.parse_args()
    os.environ.setdefault("AVCHAT_HOME", str(CACHE / "home"))
    print(f"ffmpeg: {ffmpeg_exe()}")
    if args.only in (None, "speed"):
        chart(speed(args), CACHE / "frame_sampling.png")
    if args.only in (None, "bomb"):
        bomb(args)
    if args.only in (None, "health") and not args.skip_service:
        health_latency(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
