"""Frame sampling speed: our sampler vs. per-frame seeking vs. decoding the whole stream.

Makes two H.264 720p clips with ffmpeg (cached under bench/.cache): 60 s and 10 min, 30 fps,
4 Mbit/s, a keyframe every 2 s. For each it times, side by side in one run:

* ours: ``model.media.sample_frames`` (packet scan + one decode pass), 100 frames at 384 px;
* seek: one ``ffmpeg -ss t -i clip -frames:v 1`` per target (accurate seek), 100 processes;
* whole: ``ffmpeg -threads 0 -i clip -f null -``, the cost of decoding every frame.

and prints the ratios to ``whole`` (targets: <= 1.3 on the 60 s clip, <= 0.25 on the 10 min
clip), plus a bar chart PNG next to the cache.

    python bench/frame_sampling.py [--repeat 3] [--skip-long]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.media import ffmpeg_exe, probe, sample_frames, segment_targets  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"


def make_clip(path: Path, seconds: int) -> Path:
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    print(f"making {path.name} ({seconds} s of 720p H.264, 4 Mbit/s, keyframe every 2 s)...", flush=True)
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}",
                    "-vf", "noise=alls=12:allf=t",
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M",
                    "-g", "60", "-keyint_min", "60", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", str(tmp)], check=True)
    tmp.rename(path)
    return path


def time_it(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def whole_decode(path: Path) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-threads", "0", "-i", str(path),
                    "-f", "null", "-"], check=True)


def per_frame_seek(path: Path, n: int = 100) -> None:
    info = probe(str(path))
    for t in segment_targets(info.frame_times[0], info.duration, n):
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-ss", f"{t:.3f}", "-i", str(path),
                        "-frames:v", "1", "-vf", "scale=384:384", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                       check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per method (median reported)")
    ap.add_argument("--skip-long", action="store_true", help="only the 60 s clip")
    args = ap.parse_args()
    clips = [("60 s", make_clip(CACHE / "clip_60s_720p.mp4", 60), 1.3)]
    if not args.skip_long:
        clips.append(("10 min", make_clip(CACHE / "clip_10min_720p.mp4", 600), 0.25))

    rows = []
    for name, path, target in clips:
        frames = sample_frames(str(path), 100)
        whole = time_it(lambda: whole_decode(path), args.repeat)
        ours = time_it(lambda: sample_frames(str(path), 100), args.repeat)
        seek = time_it(lambda: per_frame_seek(path), 1)
        rows.append((name, frames.mode, whole, ours, seek, target))
        print(f"{name}: mode={frames.mode}, output {frames.frames.shape} uint8 = {frames.frames.nbytes / 2**20:.0f} MiB "
              f"(one 720p RGB frame is {1280 * 720 * 3 / 2**20:.1f} MiB)", flush=True)

    print()
    print(f"| clip | our mode | whole decode (s) | ours (s) | per-frame seek (s) | ours / whole | seek / whole | target |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for name, mode, whole, ours, seek, target in rows:
        ratio = ours / whole
        ok &= ratio <= target
        print(f"| {name} | {mode} | {whole:.2f} | {ours:.2f} | {seek:.2f} | {ratio:.2f} | {seek / whole:.2f} | "
              f"<= {target} {'ok' if ratio <= target else 'MISSED'} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.25
        for i, (label, idx) in enumerate((("whole decode", 2), ("ours", 3), ("per-frame seek", 4))):
            ax.bar([j + (i - 1) * width for j in range(len(rows))], [r[idx] for r in rows], width, label=label)
        ax.set_xticks(range(len(rows)), [f"{r[0]} 720p" for r in rows])
        ax.set_ylabel("seconds for 100 frames")
        ax.set_title("Sampling 100 frames (lower is better)")
        ax.legend()
        fig.tight_layout()
        out = CACHE / "frame_sampling.png"
        fig.savefig(out, dpi=120)
        print(f"\nplot: {out}")
    except ImportError:
        pass
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
