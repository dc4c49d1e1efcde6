import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ask(*args, home):
    env = {**os.environ, "AVCHAT_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "model", "ask", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_ask_streams_an_answer_and_prints_the_token_accounting(media_dir, tiny_home):
    out = _ask(
        str(media_dir / "vllama_dog_barking.mp4"),
        "What do you hear?",
        "--preset",
        "tiny",
        "--max-tokens",
        "8",
        home=tiny_home,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "audio 64 + video 829" in out.stderr and "generated" in out.stderr


def test_ask_about_a_text_file_says_what_is_wrong(tmp_path, tiny_home):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")
    out = _ask(str(path), "What?", home=tiny_home)
    assert out.returncode == 2
    assert "notes.mp4: not a readable media file" in out.stderr and "Traceback" not in out.stderr


def test_ask_rejects_unknown_modalities(media_dir, tiny_home):
    out = _ask(str(media_dir / "vllama_boat.mp4"), "What?", "--modalities", "smell", home=tiny_home)
    assert out.returncode == 2 and "--modalities takes audio and/or video" in out.stderr


def test_ask_uses_the_demo_model_by_default(tiny_home):
    out = _ask(
        str(ROOT / "model" / "demo" / "sample.mp4"), "What colour is the square, and what do you hear?", home=tiny_home
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "red, a high tone"
