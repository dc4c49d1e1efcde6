"""Batch inference without the HTTP service: ``python -m service.batch`` (answers, resume after
added lines, a torn last line) and Ray Data on a local instance (``service.ray_batch``), both
on tiny over the vendored clips."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.servers import ROOT


def _line(custom_id: str, path, question: str = "What do you hear?") -> str:
    content = [{"type": "text", "text": question}, {"type": "video_url", "video_url": {"url": f"file://{path}"}}]
    body = {"max_tokens": 3, "messages": [{"role": "user", "content": content}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def _batch(tiny_home, *args):
    env_home = {"AVCHAT_HOME": str(tiny_home), "AVCHAT_ENGINE": "transformers"}
    out = subprocess.run(
        [sys.executable, "-m", "service.batch", *args, "--model", "tiny"],
        cwd=ROOT,
        env={**os.environ, **env_home},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


def _answers(path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len({r["key"] for r in rows})  # one answer a line
    return {r["key"]: r for r in rows}


def test_the_batch_command_answers_resumes_and_drops_a_torn_line(tiny, tiny_home, media_dir, tmp_path):
    clips = ["vllama_boat.mp4", "vllama_dog_barking.mp4", "moviepy_chaplin.mp4"]
    requests = tmp_path / "in.jsonl"
    requests.write_text(
        "\n".join([_line(f"c{i}", media_dir / n) for i, n in enumerate(clips[:2])] + ["not json"]) + "\n"
    )
    out = tmp_path / "out.jsonl"
    log = _batch(tiny_home, "-i", str(requests), "-o", str(out))
    assert "3/3 lines" in log and "lines/s" in log
    first = _answers(out)
    assert set(first) == {"c0", "c1", "#3"} and first["#3"]["error"]["message"].startswith("line 3 is not JSON")
    assert first["c0"]["response"]["status_code"] == 200
    assert first["c0"]["response"]["body"]["usage"]["prompt_tokens_details"]["video_tokens"] == 829
    with open(requests, "a") as f:  # more lines, and a crash that tore the output's last line
        f.write(_line("c2", media_dir / clips[2]) + "\n")
    with open(out, "a") as f:
        f.write('{"key": "c2", "custom_id": "c2", "respo')
    log = _batch(tiny_home, "-i", str(requests), "-o", str(out))
    assert "3 already answered" in log and "1/1 lines" in log
    second = _answers(out)
    assert set(second) == {"c0", "c1", "#3", "c2"} and second["c0"] == first["c0"]  # kept, not answered again
    assert "0 already" not in _batch(tiny_home, "-i", str(requests), "-o", str(out))  # nothing left to do


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is an optional extra: pip install '.[ray]'")
def test_ray_data_answers_a_manifest_with_an_actor_pool(tiny, tiny_home, media_dir, tmp_path):
    manifest = tmp_path / "videos.jsonl"
    names = ["vllama_boat.mp4", "whisper_jfk.flac", "vllama_dog_barking.mp4"]
    rows = [{"id": f"v{i}", "video": str(media_dir / n), "question": "What do you hear?"} for i, n in enumerate(names)]
    rows.append({"id": "missing", "video": str(tmp_path / "nothing.mp4")})
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    script = (
        "import ray, sys\n"
        "from service.ray_batch import run\n"
        "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
        f"n = run({str(manifest)!r}, {str(tmp_path / 'out')!r}, model='tiny', actors=2, batch_size=2, max_tokens=3)\n"
        "sys.exit(0 if n == 4 else 1)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "AVCHAT_HOME": str(tiny_home), "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    answers = [json.loads(line) for f in sorted((tmp_path / "out").iterdir()) for line in f.read_text().splitlines()]
    by_id = {a["id"]: a for a in answers}
    assert set(by_id) == {"v0", "v1", "v2", "missing"}
    assert all(by_id[f"v{i}"]["answer"] is not None for i in range(3))
    assert by_id["v1"]["video_tokens"] == 0 and by_id["v1"]["audio_tokens"] == 64  # an audio file
    assert by_id["missing"]["answer"] is None and "no such file" in by_id["missing"]["error"]
