"""Download helpers for the training data and weights that live on the Hugging Face hub.

    python -m training.download videoinstruct --to data/raw/videoinstruct
    HF_TOKEN=... python -m training.download commonvoice --to data/raw/cv --shards 2
    python -m training.download audiocaps --to data/raw/audiocaps
    python -m training.download bunny-projector --to data/raw/bunny

Files come through ``huggingface_hub`` (progress bars, resume: rerun the same command after an
interruption). ``--from DIR`` takes them from a local folder laid out as the hub repo is (a copy
made on a machine that reaches the hub) instead. CommonVoice's audio shards are unpacked into
``clips/`` beside ``train.tsv``, as ``prepare commonvoice`` expects. Each command ends by printing
the ``prepare`` command that comes next.

What is only on YouTube (the ActivityNet videos of VideoInstruct100K and of the Video-ChatGPT
benchmark, the raw AudioCaps audio) is not downloaded here; the README gives the ``yt-dlp``
commands.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    repo: str
    repo_type: str
    patterns: tuple[str, ...]
    next_step: str
    needs_token: bool = False


SOURCES = {
    "videoinstruct": Source(
        "MBZUAI/VideoInstruct-100K",
        "dataset",
        ("VideoInstruct100K.json",),
        "python -m training.prepare videoinstruct --json {to}/VideoInstruct100K.json "
        "--videos <ActivityNet videos> --out data/videoinstruct.jsonl",
    ),
    "commonvoice": Source(
        "mozilla-foundation/common_voice_17_0",
        "dataset",
        ("transcript/en/train.tsv", "audio/en/train/en_train_{shard}.tar"),
        "python -m training.prepare commonvoice --tsv {to}/en/train.tsv --out data/commonvoice.jsonl --limit 50000",
        needs_token=True,
    ),
    "audiocaps": Source(
        "d0rj/audiocaps",
        "dataset",
        ("*.csv", "data/*.parquet"),
        "python -m training.prepare audiocaps --csv {to}/train.csv --audio-dir <AudioCaps audio> "
        "--out data/audiocaps.jsonl",
    ),
    "bunny-projector": Source(
        "BAAI/bunny-pretrain-phi-2-siglip",
        "model",
        ("mm_projector.bin", "config.json"),
        "python -m training.finetune ... --vision-projector {to}/mm_projector.bin",
    ),
}


def patterns_for(source: Source, shards: int) -> list[str]:
    out = []
    for pattern in source.patterns:
        if "{shard}" in pattern:
            out += [pattern.format(shard=i) for i in range(shards)]
        else:
            out.append(pattern)
    return out


def from_hub(source: Source, patterns: list[str], to: Path, revision: str | None, repo: str | None) -> None:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        huggingface_hub.snapshot_download(
            repo or source.repo,
            repo_type=source.repo_type,
            revision=revision,
            allow_patterns=patterns,
            local_dir=str(to),
            token=os.environ.get("HF_TOKEN"),
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        hint = " (it is gated: accept its terms on the hub and set HF_TOKEN)" if source.needs_token else ""
        raise SystemExit(
            f"error: could not download {repo or source.repo}{hint}: {str(exc).splitlines()[0]}\n"
            f"  On a machine without the hub, copy the repository's files there and use --from DIR."
        ) from None


def from_folder(folder: Path, patterns: list[str], to: Path) -> int:
    """Copies the files matching the patterns, keeping the repo's layout; returns how many."""
    from tqdm import tqdm

    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and any(fnmatch.fnmatch(str(p.relative_to(folder)), pat) for pat in patterns)
    ]
    if not files:
        raise SystemExit(f"error: {folder} has none of {', '.join(patterns)}")
    for path in tqdm(files, desc="copy", unit="file"):
        target = to / path.relative_to(folder)
        if target.exists() and target.stat().st_size == path.stat().st_size:
            continue  # resumed: already there
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.rename(target)
    return len(files)


def unpack_commonvoice(to: Path) -> None:
    """audio/en/train/*.tar -> en/clips/, transcript/en/train.tsv -> en/train.tsv."""
    clips = to / "en" / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    for shard in sorted((to / "audio" / "en" / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if not member.isfile() or not member.name.endswith(".mp3"):
                    continue
                target = clips / Path(member.name).name  # flat: no path from the archive is trusted
                if not target.exists():
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    tsv = to / "transcript" / "en" / "train.tsv"
    if tsv.exists():
        shutil.copyfile(tsv, to / "en" / "train.tsv")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.download", description=__doc__.splitlines()[0])
    p.add_argument("source", choices=sorted(SOURCES))
    p.add_argument("--to", required=True, help="the folder to fill")
    p.add_argument("--from", dest="source_dir", default=None, help="a local copy laid out as the hub repo")
    p.add_argument("--repo", default=None, help="another hub repo with the same layout (a mirror)")
    p.add_argument("--revision", default=None)
    p.add_argument("--shards", type=int, default=1, help="CommonVoice: audio shards to fetch (about 20K clips each)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    source = SOURCES[args.source]
    to = Path(args.to)
    to.mkdir(parents=True, exist_ok=True)
    patterns = patterns_for(source, args.shards)
    if args.source_dir:
        if not Path(args.source_dir).is_dir():
            print(f"error: --from {args.source_dir}: no such folder", file=sys.stderr)
            return 2
        from_folder(Path(args.source_dir), patterns, to)
    else:
        from_hub(source, patterns, to, args.revision, args.repo)
    if args.source == "commonvoice":
        unpack_commonvoice(to)
    print(f"{args.source}: ready in {to}\nnext: {source.next_step.format(to=to)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
