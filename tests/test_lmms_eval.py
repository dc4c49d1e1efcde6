"""lmms-eval's own command line (0.7.3 from PyPI, in .venv-lmms: ``make install-lmms-eval``)
against the real service on the demo model: training/benchmarks/lmms_eval/run.sh runs the local
task avchat_clips_mc (multiple choice over the clips in tests/media) in both of lmms-eval's modes,
and the service's /metrics say what really came: sampled frames as image_url parts, or the
clips as file:// video_url parts, decoded here with their sound. Skipped without that
environment, as the Ray tests are without Ray."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest

from tests.conftest import MEDIA
from tests.servers import ROOT, Server, free_port, metric

TASK = ROOT / "training" / "benchmarks" / "lmms_eval"
RUN = TASK / "run.sh"
LMMS_EVAL = ROOT / ".venv-lmms" / "bin" / "lmms-eval"
QUESTIONS = [json.loads(line) for line in (TASK / "questions.jsonl").read_text().splitlines()]
FRAMES = 4  # run.sh's MAX_FRAMES: few, to keep the run short
VIDEO_TOKENS = 829  # 100 frame tokens + 729 patch tokens, for a file and for a set of frames alike
AUDIO_TOKENS = 64  # one 30 s window: every clip here is shorter

pytestmark = pytest.mark.skipif(
    not LMMS_EVAL.exists(), reason="lmms-eval is an optional extra in its own environment: make install-lmms-eval"
)


def _has_sound() -> dict[str, bool]:
    with open(MEDIA / "MANIFEST.tsv", newline="") as f:
        return {row["file"]: row["has_audio"] == "yes" for row in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    srv = Server(
        {
            "AVCHAT_MODEL": "demo",
            "AVCHAT_ENGINE": "transformers",
            "AVCHAT_ALLOWED_LOCAL_MEDIA_PATH": str(MEDIA),
            "AVCHAT_TEMP_DIR": str(tmp_path_factory.mktemp("lmms-tmp")),
        },
        tmp_path_factory.mktemp("logs") / "lmms.log",
    )
    yield srv.wait_ready()
    srv.stop()
    assert "Traceback" not in srv.log_text()


COUNTERS = {
    "answered": ("avchat_requests_total", 'route="/v1/chat/completions",status="200"'),
    "requests": ("avchat_requests_total", 'route="/v1/chat/completions"'),
    "decodes": ("avchat_decode_seconds_count", ""),
    "video_tokens": ("avchat_prompt_tokens_total", 'kind="video"'),
    "audio_tokens": ("avchat_prompt_tokens_total", 'kind="audio"'),
}


def _counters(url: str) -> dict[str, float]:
    return {key: metric(url, name, labels) for key, (name, labels) in COUNTERS.items()}


def _run(url: str, out, mode: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUN), url, str(out), mode],
        env={**os.environ, "MAX_FRAMES": str(FRAMES), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _evaluate(served, out, mode: str) -> tuple[dict, list[dict], dict[str, float]]:
    """Runs run.sh in ``mode``: lmms-eval's results, its samples, and what the service counted."""
    before = _counters(served.url)
    proc = _run(served.url + "/v1", out, mode)
    after = _counters(served.url)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (results_file,) = out.glob("demo/*_results.json")
    (samples_file,) = out.glob("demo/*_samples_avchat_clips_mc.jsonl")
    results = json.loads(results_file.read_text())
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    return results, samples, {key: after[key] - before[key] for key in after}


def _assert_scored_every_question(results: dict, samples: list[dict]) -> None:
    n = len(QUESTIONS)
    assert results["n-samples"]["avchat_clips_mc"] == {"original": n, "effective": n}
    assert sorted(s["doc_id"] for s in samples) == list(range(n))
    assert [s["target"] for s in sorted(samples, key=lambda s: s["doc_id"])] == [q["answer"] for q in QUESTIONS]
    scores = [s["exact_match"] for s in samples]
    assert set(scores) <= {0.0, 1.0}
    assert results["results"]["avchat_clips_mc"]["exact_match,letter"] == pytest.approx(sum(scores) / n)
    # Every reply came from the service: lmms-eval records a failed request with no tokens.
    assert all(s["token_counts"][0]["input_tokens"] > VIDEO_TOKENS for s in samples)


def test_lmms_eval_by_default_sends_each_clip_as_sampled_image_url_frames_answered_as_one_silent_video(
    served, tmp_path
):
    results, samples, sent = _evaluate(served, tmp_path / "frames", "frames")
    _assert_scored_every_question(results, samples)
    n = len(QUESTIONS)
    assert sent["answered"] == sent["requests"] == n
    assert sent["decodes"] == n * FRAMES  # each image_url frame decoded on its own
    assert sent["video_tokens"] == n * VIDEO_TOKENS  # the frames of a question pooled as one video
    assert sent["audio_tokens"] == 0  # frames carry no sound


def test_lmms_eval_with_pass_video_url_sends_file_urls_decoded_here_with_their_sound(served, tmp_path):
    results, samples, sent = _evaluate(served, tmp_path / "video_url", "video_url")
    _assert_scored_every_question(results, samples)
    n = len(QUESTIONS)
    assert len({q["video"] for q in QUESTIONS}) == n  # a clip asked about twice would be a cache hit
    assert sent["answered"] == sent["requests"] == n
    assert sent["decodes"] == n  # one file:// clip each, sampled by the service
    assert sent["video_tokens"] == n * VIDEO_TOKENS
    sounding = sum(_has_sound()[q["video"]] for q in QUESTIONS)
    assert sounding > 0
    assert sent["audio_tokens"] == sounding * AUDIO_TOKENS


def test_run_sh_fails_when_lmms_eval_only_got_errors_though_lmms_eval_itself_exits_0(tmp_path):
    proc = _run(f"http://127.0.0.1:{free_port()}/v1", tmp_path / "nobody", "video_url", MODEL="demo")
    assert proc.returncode == 1
    assert "requests to http://127.0.0.1:" in proc.stderr and "failed" in proc.stderr
