"""A synthetic audio-visual grounding benchmark, and the paper's claim reproduced at toy scale.

Each clip (numpy frames + numpy audio -> ffmpeg, seeded) shows a coloured square that moves
sideways or up and down, over a sound: a low tone, a high tone, noise, or silence. The sound is
drawn independently of the picture, so audio and video often "disagree" and neither predicts
the other. Questions come in three kinds:

* visual: the colour, asked two ways (the motion is not asked: the pooled video tokens keep
  where the square went, not which way, and tiny's random encoder cannot tell it; a size
  attribute did not learn reliably either);
* audio: what the sound is;
* audio-visual: the colour and the sound together.

``python -m training.synthetic experiment`` runs the whole recipe through our own code: data ->
feature cache -> stage 1 (audio projector) -> stage 2 with audio+video (the AV model) and with
video only (the baseline) -> evaluation on held-out clips by question kind -> results table
(markdown + JSON) and a bar chart. If a change breaks label masking, the audio branch, a
projector's gradients or the export, the table shows it.

    python -m training.synthetic experiment --out runs/synthetic          # the full run (~10 min on 2 cores)
    python -m training.synthetic experiment --out /tmp/s --quick          # a shortened run (CI)
    python -m training.synthetic clip --out sample.mp4 --colour red --motion sideways --sound "a high tone"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import charts, jsonl

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40)}
MOTIONS = ("sideways", "up and down")
SOUNDS = ("a low tone", "a high tone", "noise", "silence")
SIZE, FPS, SECONDS, RATE = 96, 10, 2.0, 16_000

QUESTIONS = {
    "visual": [("What colour is the square?", "colour"), ("Which colour do you see?", "colour")],
    "audio": [("What do you hear?", "sound")],
    "audio-visual": [("What colour is the square, and what do you hear?", "colour+sound")],
}
DESCRIBE_SOUND = ["Describe the sound.", "What sound is this?", "What can you hear?", "Name the sound you hear."]


@dataclass(frozen=True)
class ClipSpec:
    colour: str
    motion: str
    sound: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.colour}-{self.motion.replace(' ', '')}-{self.sound.replace(' ', '')}-{self.seed}"


def _frames(spec: ClipSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    n = int(SECONDS * FPS)
    frames = np.full((n, SIZE, SIZE, 3), 24, dtype=np.uint8)
    side = 28
    start = rng.integers(side, SIZE - 2 * side)
    for i in range(n):
        travel = int((SIZE - side) * i / (n - 1))
        x, y = (travel, start) if spec.motion == "sideways" else (start, travel)
        frames[i, y:y + side, x:x + side] = COLOURS[spec.colour]
    if spec.seed % 2:  # reverse direction on the same axis: direction itself is not asked
        frames = frames[::-1].copy()
    return frames


def _audio(spec: ClipSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed + 1)
    t = np.arange(int(SECONDS * RATE)) / RATE
    if spec.sound == "a low tone":
        wave_ = 0.5 * np.sin(2 * np.pi * rng.uniform(200, 300) * t)
    elif spec.sound == "a high tone":
        wave_ = 0.5 * np.sin(2 * np.pi * rng.uniform(1800, 2600) * t)
    elif spec.sound == "noise":
        wave_ = rng.uniform(-0.5, 0.5, t.shape)
    else:
        wave_ = rng.normal(0, 1e-4, t.shape)
    return wave_.astype(np.float32)


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def make_clip(spec: ClipSpec, path: Path) -> Path:
    """Writes an H.264 + AAC mp4 of the clip (and keeps nothing else)."""
    from model.media import ffmpeg_exe

    path.parent.mkdir(parents=True, exist_ok=True)
    wav = path.with_suffix(".src.wav")
    write_wav(wav, _audio(spec))
    frames = _frames(spec)
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{SIZE}x{SIZE}", "-r", str(FPS), "-i", "pipe:",
         "-i", str(wav), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(FPS),
         "-c:a", "aac", "-b:a", "64k", "-shortest", str(path)],
        input=frames.tobytes(), capture_output=True, timeout=120)
    wav.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path.name}: {proc.stderr.decode(errors='replace')[-300:]}")
    return path


def answer(spec: ClipSpec, field: str) -> str:
    parts = {"colour": spec.colour, "motion": spec.motion, "sound": spec.sound}
    return ", ".join(parts[f] for f in field.split("+"))


def specs(n: int, seed: int) -> list[ClipSpec]:
    """n clips that cover every colour x motion x sound combination as evenly as possible."""
    rng = random.Random(seed)
    combos = [(c, m, s) for c in COLOURS for m in MOTIONS for s in SOUNDS]
    out = []
    while len(out) < n:
        rng.shuffle(combos)
        out += [ClipSpec(c, m, s, seed * 100_000 + len(out) + i) for i, (c, m, s) in enumerate(combos)]
    return out[:n]


def build(out: Path, n_train: int, n_test: int, seed: int = 0, workers: int = 2) -> dict[str, Path]:
    """Clips, a stage-1 audio manifest, a stage-2 QA manifest and a held-out QA manifest."""
    clips = out / "clips"
    train, test = specs(n_train, seed), specs(n_test, seed + 1)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda s: (clips / f"{s.name}.mp4").exists() or make_clip(s, clips / f"{s.name}.mp4"),
                      train + test))
    paths = {"stage1": out / "stage1.jsonl", "train": out / "train.jsonl", "test": out / "test.jsonl"}
    rng = random.Random(seed)
    jsonl.write(paths["stage1"], ({"id": f"snd-{s.name}", "video": f"clips/{s.name}.mp4", "audio_from_video": True,
                                   "conversations": [{"from": "human", "value": "<audio>\n" + rng.choice(DESCRIBE_SOUND)},
                                                     {"from": "gpt", "value": s.sound}]} for s in train))
    for split, items in (("train", train), ("test", test)):
        jsonl.write(paths[split], ({"id": f"{split}-{s.name}-{field}", "video": f"clips/{s.name}.mp4",
                                    "audio_from_video": True, "kind": kind, "field": field, "conversations": [
                                        {"from": "human", "value": "<video>\n<audio>\n" + q},
                                        {"from": "gpt", "value": answer(s, field)}]}
                                   for s in items for kind, questions in QUESTIONS.items() for q, field in questions))
    return paths


# -- evaluation --------------------------------------------------------------------------------------------


def evaluate(checkpoint: str | Path, test_manifest: Path, feature_cache: Path | None = None) -> dict:
    """Greedy answers on held-out questions; accuracy by question kind (an answer counts when
    every expected keyword, and no other option of the same field, appears in it)."""
    from model import AVChatModel, pipeline
    from model.generation import TextStream

    from .data import ManifestDataset, read_manifest, to_messages
    from .features import FeatureStore

    model = AVChatModel.from_pretrained(checkpoint)
    store = FeatureStore(feature_cache, model.config) if feature_cache else None
    data = ManifestDataset([str(test_manifest)], model.processor, model.config.modalities, store)
    per_kind: dict[str, list[int]] = {}
    samples = []
    for row in read_manifest(test_manifest):
        example = data.load(row)  # cached encoder features, or raw media to encode
        raw = pipeline.MediaTensors(None if example.video_cached else example.video,
                                    None if example.audio_cached else example.audio)
        fresh = pipeline.encode(model, [raw])[0]
        features = pipeline.EncoderFeatures(example.video if example.video_cached else fresh.video,
                                            example.audio if example.audio_cached else fresh.audio)
        embeddings = pipeline.project(model, [features])[0]
        p = pipeline.prompt(model.processor, to_messages(row)[:1], embeddings)
        stream = TextStream(model.tokenizer, eos_token_id=model.tokenizer.eos_token_id)
        tokens = model.generate(pipeline.prompt_embeds(model, p, embeddings), max_new_tokens=16)
        out = ("".join(stream.push(t) for t in tokens) + stream.finish()).strip()
        expected = row["conversations"][1]["value"]
        ok = _correct(out, expected, row["field"])
        per_kind.setdefault(row["kind"], []).append(int(ok))
        samples.append({"id": row["id"], "kind": row["kind"], "expected": expected, "answer": out, "correct": ok})
    accuracy = {k: sum(v) / len(v) for k, v in per_kind.items()}
    return {"accuracy": accuracy, "n": {k: len(v) for k, v in per_kind.items()}, "samples": samples}


def _correct(answer_text: str, expected: str, field: str) -> bool:
    options = {"colour": list(COLOURS), "motion": list(MOTIONS), "sound": list(SOUNDS)}
    text = answer_text.lower()
    for part, name in zip(expected.split(", "), field.split("+")):
        others = [o for o in options[name] if o != part and o not in part]
        if part not in text or any(o in text for o in others if o not in part):
            return False
    return True


CHANCE = {"visual": 0.25, "audio": 0.25, "audio-visual": 1 / 16}


def report(results: dict[str, dict], out: Path, timings: dict[str, float]) -> str:
    kinds = ["visual", "audio", "audio-visual"]
    lines = ["| model | " + " | ".join(f"{k} accuracy" for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for name, res in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{res['accuracy'].get(k, 0):.2f}" for k in kinds) + " |")
    lines.append("| chance | " + " | ".join(f"{CHANCE[k]:.2f}" for k in kinds) + " |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n\n" + "\n".join(f"- {k}: {v:.0f} s" for k, v in timings.items()) + "\n")
    (out / "results.json").write_text(json.dumps({"results": {k: {"accuracy": v["accuracy"], "n": v["n"]}
                                                              for k, v in results.items()},
                                                  "chance": CHANCE, "seconds": timings}, indent=1))
    for name, res in results.items():
        jsonl.write(out / f"answers-{name.split()[0]}.jsonl", res["samples"])
    charts.bars(out / "results.png", [f"{k} questions" for k in kinds],
                {name: [res["accuracy"].get(k) for k in kinds] for name, res in results.items()},
                "accuracy on held-out clips", "Training with audio grounds answers in what is heard", (0, 1.05),
                marks={"chance": [CHANCE[k] for k in kinds]})
    return table


# -- the experiment ---------------------------------------------------------------------------------------


def _train(module: str, args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", module, *args], env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise SystemExit(f"{module} failed (exit {proc.returncode})")


def experiment(out: Path, quick: bool = False, model: str = "tiny", seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_test = (48, 16) if quick else (160, 32)
    steps1, steps2 = (60, 250) if quick else (200, 600)
    timings = {}
    t = time.time()
    paths = build(out, n_train, n_test, seed)
    timings["clips and manifests"] = time.time() - t
    t = time.time()
    _train("training.prepare", ["features", "--manifest", str(paths["train"]), "--manifest", str(paths["test"]),
                                "--model", model, "--cache", str(out / "features")])
    timings["feature cache"] = time.time() - t
    common = ["--feature-cache", str(out / "features"), "--dataloader-num-workers", "0", "--report-to", "none",
              "--logging-steps", "10", "--save-steps", "100000", "--seed", str(seed)]
    t = time.time()
    _train("training.pretrain", ["--model", model, "--data", str(paths["stage1"]), "--output-dir", str(out / "stage1"),
                                 "--max-steps", str(steps1), "--learning-rate", "3e-3", "--warmup-ratio", "0.05",
                                 "--per-device-train-batch-size", "8", "--gradient-accumulation-steps", "1", *common])
    timings["stage 1"] = time.time() - t
    results = {}
    for name, modalities in (("audio-visual (ours)", "audio,video"), ("vision-only baseline", "video")):
        run = out / ("av" if "audio" in modalities else "baseline")
        t = time.time()
        _train("training.finetune", ["--model", str(out / "stage1" / "final"), "--data", str(paths["train"]),
                                     "--output-dir", str(run), "--modalities", modalities, "--max-steps", str(steps2),
                                     "--lora-r", "64", "--lora-alpha", "128", "--lora-dropout", "0.0",
                                     "--train-norms", "true", "--learning-rate", "3e-3", "--projector-lr", "3e-3",
                                     "--warmup-ratio", "0.05",
                                     "--per-device-train-batch-size", "8", "--gradient-accumulation-steps", "1",
                                     *common])
        timings[f"stage 2, {name}"] = time.time() - t
        t = time.time()
        results[name] = evaluate(run / "final", paths["test"], out / "features")
        timings[f"evaluation, {name}"] = time.time() - t
    timings["total"] = sum(timings.values())
    table = report(results, out, timings)
    print("\n" + table + "\n")
    print(f"total {timings['total']:.0f} s; results in {out}/results.md, results.json, results.png")
    return {k: v["accuracy"] for k, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("experiment", help="data, stage 1, AV and baseline stage 2, evaluation, table, chart")
    ex.add_argument("--out", required=True, help="the experiment folder")
    ex.add_argument("--quick", action="store_true", help="fewer clips and steps (a few minutes; CI)")
    ex.add_argument("--model", default="tiny", help="starting preset or checkpoint (default tiny)")
    ex.add_argument("--seed", type=int, default=0)
    cl = sub.add_parser("clip", help="write one synthetic clip")
    cl.add_argument("--out", required=True)
    cl.add_argument("--colour", choices=list(COLOURS), default="red")
    cl.add_argument("--motion", choices=list(MOTIONS), default="sideways")
    cl.add_argument("--sound", choices=list(SOUNDS), default="a high tone")
    cl.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if args.command == "clip":
        make_clip(ClipSpec(args.colour, args.motion, args.sound, args.seed), Path(args.out))
        print(f"wrote {args.out}")
        return 0
    experiment(Path(args.out), quick=args.quick, model=args.model, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
