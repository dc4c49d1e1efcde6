"""Audio beyond 30 s, measured side by side in one run on this CPU:

1. Whisper time per window: N windows encoded as one batch against N single encodes;
2. time to first token (decode, encoders, prompt, prefill, first token) for 30 s, 2 min and
   6 min clips, each heard in full (1, 4 and 12 windows).

At ``demo`` (its four windows; the 6 min clip is heard with 12 by raising the limit in memory, its
weights being the same) and at ``phi2-shape`` in bfloat16 (random weights at the paper's sizes;
``--quick`` leaves it out: it takes about 15 minutes here).

    python bench/long_audio.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / ".cache"
LENGTHS = {"30 s": 30, "2 min": 120, "6 min": 360}


def clip(seconds: int) -> Path:
    """A 96x96 clip at 2 fps with a tone throughout."""
    import imageio_ffmpeg

    path = CACHE / f"long-{seconds}s.mp4"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
             f"testsrc2=size=96x96:rate=2:duration={seconds}", "-f", "lavfi", "-i",
             f"sine=frequency=700:duration={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
             "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
            check=True,
        )  # fmt: skip
    return path


def measure(name: str, dtype: str) -> list[tuple[str, str, str]]:
    import torch

    from model import AVChatModel
    from model.generation import generate_text
    from model.pipeline import decode, encode, preprocess, project, prompt, prompt_embeds

    model = AVChatModel.from_pretrained(name, dtype=getattr(torch, dtype))
    model.config.max_audio_windows = 12  # enough for 6 minutes; the weights do not depend on it
    rows = []
    mels = torch.randn(12, 80, 3000)
    with torch.inference_mode():
        model.encode_audio(mels[:1])  # warm-up
        for n in (4, 12):
            start = time.perf_counter()
            model.encode_audio(mels[:n])
            batch = (time.perf_counter() - start) / n
            start = time.perf_counter()
            for i in range(n):
                model.encode_audio(mels[i : i + 1])
            single = (time.perf_counter() - start) / n
            rows.append(
                (
                    f"{name} Whisper per window, {n} windows",
                    f"batch {batch * 1000:.0f} ms",
                    f"single {single * 1000:.0f} ms ({batch / single:.2f}x)",
                )
            )
    for label, seconds in LENGTHS.items():
        path = clip(seconds)
        times = []
        for _ in range(1 if name != "demo" else 3):
            start = time.perf_counter()
            media = decode(str(path), model.config)
            embeddings = project(model, encode(model, [preprocess(model.processor, media)]))[0]
            p = prompt(
                model.processor, [{"role": "user", "content": "What do you hear?"}], embeddings, max_new_tokens=8
            )
            next(generate_text(model, prompt_embeds(model, p, embeddings), 8, ignore_eos=True))
            times.append(time.perf_counter() - start)
        rows.append(
            (
                f"{name} TTFT, a {label} clip",
                f"{statistics.median(times):.2f} s",
                f"{p.audio_windows} windows, {p.counts['audio']} audio tokens",
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo only")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    rows = measure("demo", "float32")
    if not args.quick:
        rows += measure("phi2-shape", "bfloat16")
    print(f"\n{'measurement':44s} {'value':22s} beside")
    for name, value, beside in rows:
        print(f"{name:44s} {value:22s} {beside}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
