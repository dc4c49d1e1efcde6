"""The training feature cache: the frozen encoders' outputs, computed once per media file.

Layout of a cache folder (one per encoder configuration)::

    encoder.json            the encoder config the features belong to (a mismatch is refused)
    index.json              {media sha256: {"shard": n, "kinds": [...]}, "paths": {path: [size, mtime, sha256]}}
    shard-00000.safetensors "<sha256>.video" (num_frames + patches, Cv) pooled SigLIP tokens,
                            "<sha256>.audio" (64, Ca) Whisper read-out; before the projectors,
                            which are what training changes

Entries are keyed by the media's content hash; the path index only saves re-hashing files
whose size and modification time are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def encoder_signature(config) -> dict:
    """What the cached features depend on: encoders, frame count, resolution, layer, audio window."""
    return {"vision": config.vision_tower, "audio": config.audio_tower,
            "vision_hidden": config.vision_config.hidden_size, "vision_layers": config.vision_config.num_hidden_layers,
            "audio_hidden": config.audio_config.d_model, "num_frames": config.num_frames,
            "image_size": config.image_size, "feature_layer": config.vision_feature_layer,
            "audio_tokens": config.audio_tokens, "audio_seconds": config.audio_seconds}


class FeatureStore:
    def __init__(self, folder: str | os.PathLike, config, shard_size: int = 256):
        self.folder = Path(folder)
        self.signature = encoder_signature(config)
        self.shard_size = shard_size
        sig_file = self.folder / "encoder.json"
        if sig_file.exists():
            found = json.loads(sig_file.read_text())
            if found != self.signature:
                raise ValueError(f"feature cache {folder} was built for other encoders ({found}); "
                                 "use another --feature-cache folder")
        index = self.folder / "index.json"
        self.index = json.loads(index.read_text()) if index.exists() else {"entries": {}, "paths": {}}
        self._handles: dict[int, object] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_keys: dict[str, list[str]] = {}

    # -- reading ------------------------------------------------------------------------------

    def key_for(self, path: str) -> str:
        st = os.stat(path)
        known = self.index["paths"].get(os.path.abspath(path))
        if known and known[0] == st.st_size and known[1] == st.st_mtime:
            return known[2]
        return file_sha256(path)

    def get(self, path: str, kind: str) -> torch.Tensor | None:
        """The cached features of a media file, or None."""
        if not path or not os.path.exists(path):
            return None
        key = self.key_for(path)
        entry = self.index["entries"].get(key)
        if entry is None or kind not in entry["kinds"]:
            return None
        shard = entry["shard"]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.folder / f"shard-{shard:05d}.safetensors"), "pt")
        return self._handles[shard].get_tensor(f"{key}.{kind}")

    def __contains__(self, key: str) -> bool:
        return key in self.index["entries"] or key in self._pending_keys

    def __len__(self) -> int:
        return len(self.index["entries"])

    # -- writing ------------------------------------------------------------------------------

    def add(self, path: str, key: str, features: dict[str, torch.Tensor]) -> None:
        st = os.stat(path)
        self.index["paths"][os.path.abspath(path)] = [st.st_size, st.st_mtime, key]
        if key in self.index["entries"] or key in self._pending_keys:
            return
        for kind, tensor in features.items():
            self._pending[f"{key}.{kind}"] = tensor.detach().to("cpu").contiguous()
        self._pending_keys[key] = sorted(features)
        if len(self._pending_keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Writes pending features as a new shard, then the index (so an interrupted build resumes)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "encoder.json").write_text(json.dumps(self.signature, indent=1))
        if self._pending:
            shard = 1 + max((e["shard"] for e in self.index["entries"].values()), default=-1)
            tmp = self.folder / f".shard-{shard:05d}.tmp"
            save_file(self._pending, str(tmp))
            tmp.rename(self.folder / f"shard-{shard:05d}.safetensors")
            for key, kinds in self._pending_keys.items():
                self.index["entries"][key] = {"shard": shard, "kinds": kinds}
            self._pending, self._pending_keys = {}, {}
        tmp_index = self.folder / ".index.json.tmp"
        tmp_index.write_text(json.dumps(self.index))
        tmp_index.rename(self.folder / "index.json")
