"""The training feature cache: the frozen encoders' outputs (``model.pipeline.encode``),
computed once per media file, and the command that builds it.

    python -m training.features --manifest data/vi.jsonl --model phi2 --cache data/features --device cuda
    torchrun --nproc-per-node 8 -m training.features --manifest data/vi.jsonl --model phi2 --cache data/features

Under torchrun (or with ``--shard i/n``) each process encodes every n-th file on its own GPU
and writes its own shards and index, so 100K videos spread over all devices; readers merge the
indexes. Layout of a cache folder (one per encoder configuration)::

    encoder.json                 the encoder config the features belong to (a mismatch is refused)
    index-<writer>.json          {"entries": {sha256: {"shard": file, "kinds": [...]}},
                                  "paths": {path: [size, mtime, sha256]}}
    shard-<writer>-00000.safetensors
        "<sha256>.video" (num_frames + patches, Cv) pooled SigLIP tokens,
        "<sha256>.audio" (64, Ca) Whisper read-out; before the projectors, which training changes

Entries are keyed by the media's content hash; the path index only saves re-hashing files
whose size and modification time are unchanged. Every run resumes: files already encoded are
skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# torch and safetensors load where they are used, so that --help answers at once.


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def encoder_signature(config) -> dict:
    """What the cached features depend on: encoders, frame count, resolution, layer, audio window."""
    return {
        "vision": config.vision_tower,
        "audio": config.audio_tower,
        "vision_hidden": config.vision_config.hidden_size,
        "vision_layers": config.vision_config.num_hidden_layers,
        "audio_hidden": config.audio_config.d_model,
        "num_frames": config.num_frames,
        "image_size": config.image_size,
        "feature_layer": config.vision_feature_layer,
        "audio_tokens": config.audio_tokens,
        "audio_seconds": config.audio_seconds,
        "max_audio_windows": config.max_audio_windows,
    }


class FeatureStore:
    def __init__(self, folder: str | os.PathLike, config, shard_size: int = 256, writer: str = "0"):
        self.folder = Path(folder)
        self.signature = encoder_signature(config)
        self.shard_size, self.writer = shard_size, writer
        sig_file = self.folder / "encoder.json"
        if sig_file.exists():
            found = json.loads(sig_file.read_text())
            if found != self.signature:
                raise ValueError(
                    f"feature cache {folder} was built for other encoders ({found}); use another --feature-cache folder"
                )
        self.index: dict = {"entries": {}, "paths": {}}
        self.own: dict = {"entries": {}, "paths": {}}  # what this writer wrote
        for part in sorted(self.folder.glob("index*.json")):
            data = json.loads(part.read_text())
            for key in ("entries", "paths"):
                self.index[key].update(data[key])
            if part.name == f"index-{writer}.json":
                self.own = data
        self._handles: dict[str, object] = {}
        self._pending: dict = {}  # "<sha256>.<kind>" -> tensor
        self._pending_keys: dict[str, list[str]] = {}

    # -- reading ------------------------------------------------------------------------------

    def key_for(self, path: str) -> str:
        st = os.stat(path)
        known = self.index["paths"].get(os.path.abspath(path))
        if known and known[0] == st.st_size and known[1] == st.st_mtime:
            return known[2]
        return file_sha256(path)

    def get(self, path: str, kind: str):
        """The cached features of a media file (a tensor), or None."""
        if not path or not os.path.exists(path):
            return None
        key = self.key_for(path)
        entry = self.index["entries"].get(key)
        if entry is None or kind not in entry["kinds"]:
            return None
        shard = entry["shard"]
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(self.folder / shard), "pt")
        return self._handles[shard].get_tensor(f"{key}.{kind}")

    def __contains__(self, key: str) -> bool:
        return key in self.index["entries"] or key in self._pending_keys

    def __len__(self) -> int:
        return len(self.index["entries"])

    # -- writing ------------------------------------------------------------------------------

    def add(self, path: str, key: str, features: dict) -> None:
        st = os.stat(path)
        for index in (self.index, self.own):
            index["paths"][os.path.abspath(path)] = [st.st_size, st.st_mtime, key]
        if key in self:
            return
        for kind, tensor in features.items():
            self._pending[f"{key}.{kind}"] = tensor.detach().to("cpu").contiguous()
        self._pending_keys[key] = sorted(features)
        if len(self._pending_keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Writes pending features as a new shard, then this writer's index (so an interrupted
        build resumes)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "encoder.json").write_text(json.dumps(self.signature, indent=1))
        if self._pending:
            from safetensors.torch import save_file

            n = len({e["shard"] for e in self.own["entries"].values()})
            shard = f"shard-{self.writer}-{n:05d}.safetensors"
            tmp = self.folder / f".{shard}.tmp"
            save_file(self._pending, str(tmp))
            tmp.rename(self.folder / shard)
            for key, kinds in self._pending_keys.items():
                for index in (self.index, self.own):
                    index["entries"][key] = {"shard": shard, "kinds": kinds}
            self._pending, self._pending_keys = {}, {}
        tmp_index = self.folder / f".index-{self.writer}.json.tmp"
        tmp_index.write_text(json.dumps(self.own))
        tmp_index.rename(self.folder / f"index-{self.writer}.json")


# -- building ----------------------------------------------------------------------------------------


def media_of(manifests: list[str], data_root: str | None) -> dict[str, set[str]]:
    """Every media file the manifests name, with the streams wanted from it."""
    from .data import read_manifest

    media: dict[str, set[str]] = {}
    for manifest in manifests:
        for row in read_manifest(manifest, data_root):
            for key, kind in (("video", "video"), ("image", "video"), ("audio", "audio")):
                if row.get(key):
                    media.setdefault(row[key], set()).add(kind)
            if row.get("audio_from_video") and row.get("video"):
                media[row["video"]].add("audio")
    return media


def _shard() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def build(args) -> int:
    import torch
    from tqdm import tqdm

    from model import AVChatModel, pipeline
    from model.media import MediaError

    rank, world = args.shard or _shard()
    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % max(1, torch.cuda.device_count())}"
    model = AVChatModel.from_pretrained(args.model, device=device)
    if args.max_audio_windows:
        model.config.max_audio_windows = args.max_audio_windows
    store = FeatureStore(args.cache, model.config, shard_size=args.shard_size, writer=f"{rank}of{world}")
    media = sorted(media_of(args.manifest, args.data_root).items())[rank::world]
    skipped: list[tuple[str, str]] = []

    def decode(item):
        path, kinds = item
        if not os.path.exists(path):
            return path, None, None, "missing file"
        key = store.key_for(path)
        if key in store:
            return path, key, None, None
        try:  # one decode for every stream wanted from the file (a video without sound: video alone)
            tensors = pipeline.preprocess(model.processor, pipeline.decode(path, model.config, sorted(kinds)))
        except MediaError as exc:
            return path, None, None, str(exc)
        return path, key, tensors, None

    done = 0
    with (
        ThreadPoolExecutor(max(1, args.workers)) as pool,
        tqdm(total=len(media), desc=f"features {rank}/{world}", unit="file") as bar,
    ):
        batch: list[tuple[str, str, pipeline.MediaTensors]] = []

        def encode_batch():
            nonlocal done
            feats = pipeline.encode(model, [t for _, _, t in batch])
            for (path, key, _), f in zip(batch, feats):
                store.add(
                    path, key, {k: v.float() for k, v in (("video", f.video), ("audio", f.audio)) if v is not None}
                )
                done += 1
            batch.clear()

        for path, key, tensors, problem in pool.map(decode, media):
            if problem is not None:
                skipped.append((path, problem))
            elif tensors is None:
                store.add(path, key, {})
            else:
                batch.append((path, key, tensors))
                if len(batch) >= args.batch_size:
                    encode_batch()
            bar.update(1)
        if batch:
            encode_batch()
    store.flush()
    print(f"features: encoded {done} new files into {args.cache} ({len(store)} in all); skipped {len(skipped)}")
    for path, reason in skipped[:10]:
        print(f"  skipped {path}: {reason}")
    return 0


def parser(prog: str = "python -m training.features") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run the frozen encoders once over manifests' media.")
    p.add_argument("--manifest", action="append", required=True, help="a manifest (repeat for several)")
    p.add_argument("--model", default="tiny", help="checkpoint folder or preset whose encoders to use")
    p.add_argument("--cache", required=True, help="the feature cache folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each rank its own GPU)")
    p.add_argument(
        "--data-root", default=None, help="where relative media paths start (default: the manifest's folder)"
    )
    p.add_argument(
        "--shard",
        type=lambda t: tuple(int(x) for x in t.split("/")),
        default=None,
        metavar="I/N",
        help="encode only the I-th of N parts (default: RANK/WORLD_SIZE of a torchrun launch)",
    )
    p.add_argument("--shard-size", type=int, default=256, help="files per safetensors shard")
    p.add_argument(
        "--max-audio-windows",
        type=int,
        default=None,
        help="30 s audio windows to encode per file (default: the model's; training's --max-audio-windows)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="files encoded together")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="parallel decodes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    for m in args.manifest:
        if not os.path.exists(m):
            print(f"error: --manifest {m}: no such file", file=sys.stderr)
            return 2
    return build(args)


if __name__ == "__main__":
    raise SystemExit(main())
