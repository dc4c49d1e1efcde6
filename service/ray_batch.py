"""Batch inference on a Ray cluster with Ray Data: a manifest of videos and questions in, answers
out as JSON lines or Parquet. Each actor of a pool holds the model (``map_batches`` with a
class), so the weights load once per actor and every file goes through the same media pipeline
and generation stage as everywhere else. Ray is an optional extra (``pip install '.[ray]'``);
the service never needs it.

    python -m service.ray_batch --manifest videos.jsonl --out answers/ [--model demo] [--actors 2]
        [--format jsonl|parquet] [--address auto]

Manifest lines: ``{"id": ..., "video": "path/to/clip.mp4", "question": "What do you hear?"}``
(relative paths start at the manifest's folder). On a cluster every node must see the files
(a shared filesystem, or paths the workers can read) and the model (a preset or a folder there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


class Answerer:
    """One actor: the model, loaded once, answering batches of manifest rows."""

    def __init__(self, model: str, max_tokens: int, device: str = "cpu"):
        from model import AVChatModel

        self.model = AVChatModel.from_pretrained(model, device=device)
        self.max_tokens = max_tokens

    def __call__(self, batch: dict) -> dict:
        from model import MediaError, pipeline
        from model.generation import answer

        out = {"id": [], "answer": [], "error": [], "audio_tokens": [], "video_tokens": []}
        for row_id, video, question in zip(batch["id"], batch["video"], batch["question"]):
            try:
                _, embeddings = pipeline.embed_media(self.model, [str(video)])[0]
                messages = [{"role": "user", "content": str(question)}]
                p = pipeline.prompt(self.model.processor, messages, embeddings, max_new_tokens=self.max_tokens)
                text, _, _ = answer(self.model, pipeline.prompt_embeds(self.model, p, embeddings), self.max_tokens)
                found = (text.strip(), None, p.counts["audio"], p.counts["video"])
            except (MediaError, ValueError) as exc:  # one bad file never stops the run
                found = (None, str(exc), 0, 0)
            for key, value in zip(("answer", "error", "audio_tokens", "video_tokens"), found):
                out[key].append(value)
            out["id"].append(str(row_id))
        return out


def read_manifest(path: str | os.PathLike) -> list[dict]:
    base = Path(path).resolve().parent
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            video = Path(row["video"])
            rows.append({"id": str(row["id"]), "video": str(video if video.is_absolute() else base / video),
                         "question": row.get("question", "Describe what you see and hear.")})  # fmt: skip
    return rows


def run(
    manifest: str,
    out: str,
    model: str = "demo",
    actors: int = 1,
    batch_size: int = 4,
    max_tokens: int = 64,
    fmt: str = "jsonl",
    cpus_per_actor: float = 1.0,
) -> int:
    """Answers every manifest row with a pool of ``actors`` (Ray must be initialised, or it starts
    a local instance); returns how many rows were written."""
    import ray

    rows = read_manifest(manifest)
    ds = ray.data.from_items(rows).map_batches(
        Answerer,
        fn_constructor_args=(model, max_tokens),
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=cpus_per_actor,
        batch_format="numpy",
    )
    if fmt == "parquet":
        ds.write_parquet(out)
    else:
        ds.write_json(out)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.ray_batch", description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="a folder: Ray writes one file per block into it")
    p.add_argument("--model", default="demo")
    p.add_argument("--actors", type=int, default=1, help="actors in the pool, each holding the model")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    p.add_argument("--address", default=None, help="a Ray cluster to join (default: a local instance)")
    args = p.parse_args(argv)
    try:
        import ray
    except ImportError:
        print("error: Ray is not installed: pip install '.[ray]'", file=sys.stderr)
        return 2
    ray.init(address=args.address)
    n = run(args.manifest, args.out, args.model, args.actors, args.batch_size, args.max_tokens, args.format)
    print(f"answered {n} rows into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
