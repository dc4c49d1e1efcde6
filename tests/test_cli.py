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


def test_hostile_files_get_a_one_line_refusal_and_no_traceback(tmp_path, tiny_home):
    from tests.conftest import H264, ffmpeg, lavfi, make_secret_ts
    from tests.test_media import hostile_files

    target = tmp_path / "secret.ts"
    make_secret_ts(target)
    files = {name: tmp_path / f"{name}.mp4" for name in hostile_files(tmp_path, target, "http://127.0.0.1:9")}
    for name, data in hostile_files(tmp_path, target, "http://127.0.0.1:9").items():
        files[name].write_bytes(data)
    files["bomb"] = tmp_path / "bomb.mp4"
    ffmpeg(
        *lavfi("color=c=black:size=8192x8192:rate=25"),
        "-frames:v",
        "3",
        *H264,
        str(files["bomb"]),
    )
    for name, path in files.items():
        out = _ask(str(path), "What is this?", "--preset", "tiny", home=tiny_home)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == ""
        expected = "AVCHAT_MAX_PIXELS" if name == "bomb" else "points at other files"
        assert expected in lines[0], (name, lines[0])


def test_a_time_window_from_the_command_line(media_dir, tiny_home):
    out = _ask(
        str(media_dir / "vllama_boat.mp4"),
        "?",
        "--preset",
        "tiny",
        "--max-tokens",
        "2",
        "--start",
        "1",
        "--end",
        "3",
        home=tiny_home,
    )
    assert out.returncode == 0, out.stderr
    assert "[media] 2.0 s analysed" in out.stderr
    late = _ask(str(media_dir / "vllama_boat.mp4"), "?", "--preset", "tiny", "--start", "60", home=tiny_home)
    assert late.returncode == 2 and "past the end" in late.stderr and "Traceback" not in late.stderr
