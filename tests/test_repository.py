"""The repository stands alone: nothing reaches outside it, and the vendored clips are the ones
their manifest describes."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p]


def test_no_file_refers_to_a_shared_folder_outside_the_repository():
    # Spelt in parts so that this file does not match itself.
    needles = ["../" + "shared", '"shared" / ' + '"media"', '"shared" / ' + '"benchmarks"']
    offenders = []
    for path in _tracked():
        if path.suffix in (".mp4", ".mov", ".webm", ".flac", ".png", ".safetensors") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        if any(n in text for n in needles):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_vendored_clips_match_their_manifest():
    media = ROOT / "tests" / "media"
    with open(media / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows and {r["file"] for r in rows} == {p.name for p in media.iterdir() if p.suffix not in (".tsv", ".md")}
    for row in rows:
        digest = hashlib.sha256((media / row["file"]).read_bytes()).hexdigest()
        assert digest == row["sha256"], row["file"]
        assert row["license"] and row["source_repo"] and row["commit"]


def test_a_copy_of_the_repository_alone_runs_the_real_clip_tests(tmp_path):
    """Only tracked files, in an empty folder: nothing beside it, the real-clip tests still run."""
    clone = tmp_path / "alone" / "repo"
    for path in _tracked():
        if path.is_file():
            target = clone / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_media.py::test_every_real_clip_decodes", "-rs"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "1 passed" in out.stdout and "skipped" not in out.stdout
