"""The synthetic grounding benchmark: its generator, a shortened run of the experiment (learning
is asserted), and the demo model it produced, served by default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import numpy as np
import pytest

from model.pipeline import decode
from model.presets import tiny_config
from tests.servers import ROOT, Server, free_port
from training.synthetic import ClipSpec, make_clip


@pytest.mark.parametrize("sound, band", [("a low tone", (190, 310)), ("a high tone", (1790, 2610))])
def test_clips_show_the_colour_and_play_the_sound(tmp_path, sound, band):
    path = make_clip(ClipSpec("blue", "up and down", sound, 5), tmp_path / "c.mp4")
    media = decode(str(path), tiny_config())
    frames = media.frames.frames.astype(int)
    blue = (frames[..., 2] > 180) & (frames[..., 0] < 120)
    assert 0.03 < blue.mean() < 0.2  # a square, not the whole frame
    spectrum = np.abs(np.fft.rfft(media.audio[:16000]))
    assert band[0] <= np.argmax(spectrum) <= band[1]


def test_silence_and_noise_differ_in_energy(tmp_path):
    quiet = decode(str(make_clip(ClipSpec("red", "sideways", "silence", 1), tmp_path / "q.mp4")), tiny_config()).audio
    noise = decode(str(make_clip(ClipSpec("red", "sideways", "noise", 1), tmp_path / "n.mp4")), tiny_config()).audio
    assert np.abs(quiet).mean() < 0.01 < np.abs(noise).mean()


@pytest.mark.timeout(1800)  # about 3.5 minutes alone here, 11+ on a busy machine; its own limit is 1500 s
def test_a_shortened_experiment_learns_from_audio(tmp_path, tiny_home):
    env = {**os.environ, "AVCHAT_HOME": str(tiny_home), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(
        [sys.executable, "-m", "training.synthetic", "experiment", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    av, baseline = results["audio-visual (ours)"]["accuracy"], results["vision-only baseline"]["accuracy"]
    assert av["audio"] >= 0.6, av  # chance is 0.25
    assert av["audio"] > baseline["audio"] + 0.25, (av, baseline)
    losses = [h["loss"] for h in json.loads((tmp_path / "av" / "log_history.json").read_text()) if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses
    assert (tmp_path / "results.md").exists() and (tmp_path / "results.png").stat().st_size > 5000


def test_the_demo_model_is_served_by_default_and_answers_from_sound_and_picture(tmp_path):
    srv = Server({"AVCHAT_MODEL": "demo", "AVCHAT_ENGINE": "transformers"}, tmp_path / "demo.log")
    clip = make_clip(ClipSpec("green", "up and down", "noise", 123), tmp_path / "green-noise.mp4")
    try:
        srv.wait_ready()
        assert httpx.get(srv.url + "/v1/models").json()["data"][0]["id"] == "demo"

        def full(path, question, **form):
            with open(path, "rb") as f:
                r = httpx.post(
                    srv.url + "/v1/video/chat",
                    files={"video": (path.name, f)},
                    data={"prompt": question, "max_tokens": "8", "temperature": "0", **form},
                    timeout=300,
                )
            assert r.status_code == 200, r.text
            return r.json()

        def ask(path, question):
            return full(path, question)["choices"][0]["message"]["content"].strip()

        sample = ROOT / "model" / "demo" / "sample.mp4"
        assert ask(sample, "What do you hear?") == "a high tone"
        assert ask(sample, "What colour is the square?") == "red"
        assert ask(clip, "What colour is the square, and what do you hear?") == "green, noise"

        # Beyond one 30 s window: a sound that starts at 50 s after silence, and one heard only in
        # the first 4 s of a clip that is silent after them.
        late = make_clip(ClipSpec("blue", "sideways", "a low tone", 4242, 75.0, "late", 50.0), tmp_path / "late.mp4")
        early = make_clip(ClipSpec("yellow", "up and down", "noise", 4343, 70.0, "early"), tmp_path / "early.mp4")
        heard = full(late, "What do you hear?")
        assert heard["choices"][0]["message"]["content"].strip() == "a low tone"
        assert heard["usage"]["prompt_tokens_details"]["audio_tokens"] == 3 * 64  # 75 s: three windows
        assert heard["media"]["audio_s"] == pytest.approx(75.0, abs=0.1) and heard["media"]["audio_truncated_s"] == 0
        one = full(late, "What do you hear?", max_audio_windows="1")  # the paper's single window: 30 s of silence
        assert one["usage"]["prompt_tokens_details"]["audio_tokens"] == 64
        assert one["media"]["audio_truncated_s"] == pytest.approx(45.0, abs=0.1)
        assert ask(late, "What colour is the square?") == "blue"
        assert ask(early, "What colour is the square, and what do you hear?") == "yellow, noise"
    finally:
        srv.stop()


def test_make_demos_script_answers_says_the_model_is_a_toy_and_keeps_serving(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        ["bash", "scripts/demo.sh"],
        cwd=ROOT,
        env={**os.environ, "PY": sys.executable, "PORT": str(port), "AVCHAT_MODEL": "demo"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving on"):
                break
        text = "".join(lines)
        assert "answer: red, a high tone" in text and "a toy" in text and "AVCHAT_MODEL=phi2" in text, text
        assert httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200  # still serving
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
