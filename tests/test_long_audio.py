"""Audio beyond 30 s through every caller (real ffmpeg, uvicorn, both engines, the command line),
on tiny with four windows declared: the windows, their tokens and the media report end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.conftest import H264, ffmpeg, lavfi
from tests.servers import ROOT, Server
from tests.test_service import _engines


@pytest.fixture(scope="module")
def windowed(tiny, tmp_path_factory):
    """tiny, with max_audio_windows 4 in its config (its weights as they are)."""
    checkpoint = tmp_path_factory.mktemp("windowed") / "tiny-4"
    shutil.copytree(tiny.source, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["max_audio_windows"] = 4
    (checkpoint / "config.json").write_text(json.dumps(config))
    return checkpoint


@pytest.fixture(scope="module")
def late(tmp_path_factory):
    """100 s: silence for 40 s, then a tone to the end."""
    path = tmp_path_factory.mktemp("long") / "late.mp4"
    ffmpeg(
        *lavfi("testsrc2=size=96x96:rate=2:duration=100", "anullsrc=r=16000:cl=mono:d=40", "sine=frequency=900:d=60"),
        "-filter_complex", "[1:a][2:a]concat=n=2:v=0:a=1[a]", "-map", "0:v", "-map", "[a]",
        *H264, "-c:a", "aac", str(path),
    )  # fmt: skip
    return path


@pytest.fixture(scope="module", params=_engines())
def served(request, windowed, tiny_home, tmp_path_factory):
    srv = Server(
        {
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_MODEL": str(windowed),
            "AVCHAT_ENGINE": request.param,
            "VLLM_CPU_KVCACHE_SPACE": "1",
        },
        tmp_path_factory.mktemp("logs") / f"long-{request.param}.log",
    )
    yield srv.wait_ready(300)
    srv.stop()


def _ask(url, path, **fields):
    data = {
        "prompt": "What do you hear?",
        "max_tokens": "6",
        "temperature": "0",
        **{k: str(v) for k, v in fields.items()},
    }
    with open(path, "rb") as f:
        r = httpx.post(url + "/v1/video/chat", files={"video": (path.name, f)}, data=data, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_service_hears_every_window_on_both_engines(served, late, windowed):
    whole = _ask(served.url, late)
    assert whole["usage"]["prompt_tokens_details"]["audio_tokens"] == 4 * 64
    assert whole["media"]["audio_s"] == pytest.approx(100, abs=0.2) and whole["media"]["audio_truncated_s"] == 0
    fewer = _ask(served.url, late, max_audio_windows=2)
    assert fewer["usage"]["prompt_tokens_details"]["audio_tokens"] == 2 * 64
    assert fewer["media"]["audio_s"] == pytest.approx(60) and fewer["media"]["audio_truncated_s"] == pytest.approx(
        40, abs=0.2
    )
    again = httpx.post(  # a follow-up by video_id: the cached features hold every window
        served.url + "/v1/video/chat",
        data={"video_id": whole["video_id"], "prompt": "And?", "max_tokens": "2", "max_audio_windows": "3"},
        timeout=120,
    ).json()
    assert again["usage"]["prompt_tokens_details"]["audio_tokens"] == 3 * 64


def test_both_engines_decode_the_greedy_tokens_of_the_multi_window_prompt(served, late, windowed):
    from model import AVChatModel
    from model.generation import answer
    from model.pipeline import embed_media, prompt, prompt_embeds

    model = AVChatModel.from_pretrained(windowed)
    _, embeddings = embed_media(model, [str(late)])[0]
    p = prompt(model.processor, [{"role": "user", "content": "What do you hear?"}], embeddings, max_new_tokens=6)
    assert p.audio_windows == 4
    text, tokens, _ = answer(model, prompt_embeds(model, p, embeddings), 6)
    r = _ask(served.url, late)
    assert r["choices"][0]["message"]["content"] == text and r["usage"]["completion_tokens"] == tokens


def test_the_command_line_hears_the_windows_and_says_what_it_did_not(windowed, late, tiny_home):
    def ask(*extra):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "model",
                "ask",
                str(late),
                "?",
                "--checkpoint",
                str(windowed),
                "--max-tokens",
                "2",
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        return out.stderr

    whole = ask()
    assert "audio 256" in whole and "audio heard 100.0 s" in whole
    one = ask("--max-audio-windows", "1")
    assert "audio 64" in one and "70.0 s not heard (1 window(s) of 30 s" in one


def test_training_samples_carry_their_windows_cached_or_raw(windowed, late, tmp_path):
    """A 100 s sample (4 windows) beside a 2 s one (1 window), as raw media and from the feature
    cache: the same loss, and a mixed batch too."""
    import torch

    from model import AVChatModel
    from training.data import Collator, ManifestDataset
    from training.features import FeatureStore
    from training.features import main as build_features
    from training.trainer import encoder_features

    short = tmp_path / "short.mp4"
    ffmpeg(
        *lavfi("testsrc2=size=96x96:rate=10:duration=2", "sine=frequency=300:duration=2"),
        *H264,
        "-c:a",
        "aac",
        str(short),
    )
    manifest = tmp_path / "m.jsonl"
    turns = [{"from": "human", "value": "What do you hear?"}, {"from": "gpt", "value": "a tone"}]
    manifest.write_text(
        "\n".join(
            json.dumps({"id": n, "video": str(p), "audio_from_video": True, "conversations": turns})
            for n, p in (("long", late), ("short", short))
        )
        + "\n"
    )
    assert build_features(["--manifest", str(manifest), "--model", str(windowed), "--cache", str(tmp_path / "f")]) == 0
    model = AVChatModel.from_pretrained(windowed)
    raw = ManifestDataset([str(manifest)], model.processor, ["audio", "video"])
    cached = ManifestDataset(
        [str(manifest)], model.processor, ["audio", "video"], FeatureStore(tmp_path / "f", model.config)
    )
    assert raw[0].raw.audio.shape == (4, 80, 3000) and cached[0].cached.audio.shape[0] == 4 * 64
    assert raw[0].ids.count(model.processor.audio_token_id) == 4 * 64 and raw[1].raw.audio.shape[0] == 1
    collate = Collator(model.tokenizer.pad_token_id)
    with torch.no_grad():
        losses = [
            model(**encoder_features(model, collate(batch))).loss
            for batch in ([raw[0], raw[1]], [cached[0], cached[1]], [cached[0], raw[1]], [raw[1], cached[0]])
        ]
    assert all(torch.isfinite(x) for x in losses)
    assert all(torch.allclose(losses[0], x, atol=1e-4) for x in losses[1:])
