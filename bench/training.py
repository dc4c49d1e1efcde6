"""Training speed on tiny: steps per second and peak memory with the feature cache vs encoding
every sample's media on the fly, side by side in one run (each in its own process, so peak
memory is that run's alone).

    python bench/training.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from clips import CLIPS, MEDIA  # noqa: E402


def manifest(tmp: Path) -> Path:
    path = tmp / "bench.jsonl"
    with path.open("w") as f:
        for i, clip in enumerate(CLIPS * 2):
            row = {
                "id": f"b{i}",
                "video": str(MEDIA / clip),
                "audio_from_video": True,
                "conversations": [
                    {"from": "human", "value": "<video>\nWhat happens in this clip?"},
                    {"from": "gpt", "value": f"clip number {i} plays"},
                ],
            }
            f.write(json.dumps(row) + "\n")
    return path


def run(tmp: Path, data: Path, steps: int, cache: Path | None) -> dict:
    out = tmp / ("cached" if cache else "raw")
    args = [
        sys.executable,
        "-m",
        "training.finetune",
        "--model",
        "tiny",
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--max-steps",
        str(steps),
        "--per-device-train-batch-size",
        "2",
        "--gradient-accumulation-steps",
        "1",
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
        "--save-steps",
        "100000",
        "--logging-steps",
        "1",
        "--dataloader-num-workers",
        "0",
        "--report-to",
        "none",
        "--export",
        "false",
    ]
    if cache:
        args += ["--feature-cache", str(cache)]
    script = (
        "import resource, runpy, sys, time; sys.argv = sys.argv[1:]; t = time.time()\n"
        "try:\n    runpy.run_module('training.finetune', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'WALL', time.time() - t)"
    )
    proc = subprocess.run([sys.executable, "-c", script, *args[2:]], cwd=ROOT, capture_output=True, text=True)
    tail = [line for line in proc.stdout.splitlines() if line.startswith("PEAK")]
    if proc.returncode != 0 or not tail:
        raise SystemExit(proc.stderr[-3000:])
    _, peak_kb, _, _ = tail[-1].split()
    history = json.loads((out / "log_history.json").read_text())
    runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
    return {"steps_per_s": steps / runtime, "peak_mib": int(peak_kb) / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="avchat-trainbench-"))
    data = manifest(tmp)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.prepare",
            "features",
            "--manifest",
            str(data),
            "--model",
            "tiny",
            "--cache",
            str(tmp / "features"),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    build = time.perf_counter() - start
    raw = run(tmp, data, args.steps, None)
    cached = run(tmp, data, args.steps, tmp / "features")
    print(f"\ntiny, {args.steps} steps of batch 2 (video + its audio), LoRA r 8; cache built once in {build:.1f} s\n")
    print("| run | steps/s | peak memory (MiB) |")
    print("|---|---|---|")
    print(f"| encode on the fly | {raw['steps_per_s']:.2f} | {raw['peak_mib']:.0f} |")
    print(f"| feature cache | {cached['steps_per_s']:.2f} | {cached['peak_mib']:.0f} |")
    print(
        f"\nspeed-up with the cache: {cached['steps_per_s'] / raw['steps_per_s']:.1f}x; "
        f"peak memory ratio: {cached['peak_mib'] / raw['peak_mib']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
