"""Shared fixtures: the tiny model (built once per session), the real clips vendored in
tests/media (provenance in tests/media/MANIFEST.tsv) and clips generated with ffmpeg."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest

MEDIA = Path(__file__).resolve().parent / "media"

# The `slow` tier (make test leaves none out; make test-fast leaves these out): whatever starts the
# service process, trains, runs the paper's sizes, or builds an environment.
SLOW_MODULES = {
    "test_api_features",
    "test_batch",
    "test_batch_offline",
    "test_cli",
    "test_fleet",
    "test_lmms_eval",
    "test_long_audio",
    "test_media_parts",
    "test_page",
    "test_readme",
    "test_real_size",
    "test_service",
    "test_service_edge",
    "test_service_limits",
    "test_service_stops",
    "test_synthetic",
    "test_training",
}
SLOW_FIXTURES = {"server", "client"}  # test_clients, test_evaluate: a real service behind them
SLOW_TESTS = {
    "test_the_service_on_phi2_without_a_network_says_why_it_is_not_ready",
    "test_the_phi2_preset_without_a_network_fails_fast_saying_what_to_do",
    "test_a_copy_of_the_repository_alone_runs_the_real_clip_tests",
    "test_the_sdk_installs_alone_without_torch",
    "test_every_package_pin_in_the_image_exists_in_the_package_index",
    "test_an_unreachable_judge_ends_with_a_message_not_a_traceback",
    "test_a_judge_run_killed_half_way_resumes",
}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        if module in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames) or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


MEDIA_FILES = sorted(p for p in MEDIA.glob("*") if p.suffix not in (".tsv", ".md"))


# Fixtures are made with one fixed binary, the imageio-ffmpeg wheel's (9.x, with libx264, libopus,
# libvpx and -display_rotation), whichever ffmpeg the code under test runs (AVCHAT_FFMPEG, else the
# system's: .ci/run runs the media and service tests with both).
FIXTURE_FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str) -> None:
    subprocess.run(
        [FIXTURE_FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True, timeout=300
    )


# Fast H.264 that every player and every supported ffmpeg decodes.
H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


def lavfi(*graphs: str) -> list[str]:
    """ffmpeg inputs made by lavfi source graphs (testsrc2=..., sine=...)."""
    return [arg for graph in graphs for arg in ("-f", "lavfi", "-i", graph)]


def variable_rate(seconds_each: float) -> list[str]:
    """ffmpeg arguments for an H.264 video at 5 fps for ``seconds_each``, then 30 fps as long."""
    graphs = (f"testsrc2=size=160x120:rate={rate}:duration={seconds_each}" for rate in (5, 30))
    return [*lavfi(*graphs), "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-fps_mode", "vfr", *H264]


def make_secret_ts(path: Path) -> Path:
    """A real, decodable local MPEG-TS file: what the hostile files try to make the service read."""
    ffmpeg(
        *lavfi("testsrc2=size=64x64:rate=10:duration=2"),
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "mpegts",
        str(path),
    )
    return path


def make_two_tones(path: Path, seconds: float, first_tone_s: float = 4.0) -> Path:
    """A video of ``seconds`` whose sound is 300 Hz for ``first_tone_s``, then 1200 Hz to the end."""
    ffmpeg(
        *lavfi(
            f"testsrc2=size=96x96:rate=25:duration={seconds:g}",
            f"sine=frequency=300:duration={first_tone_s:g}",
            f"sine=frequency=1200:duration={seconds - first_tone_s:g}",
        ),
        "-filter_complex", "[1:a][2:a]concat=n=2:v=0:a=1[a]", "-map", "0:v", "-map", "[a]",
        *H264, "-c:a", "aac", str(path),
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def media_dir() -> Path:
    assert MEDIA_FILES, f"no media files in {MEDIA}"
    return MEDIA


@pytest.fixture(scope="session")
def media_files(media_dir) -> list[Path]:
    """Every vendored real clip."""
    return MEDIA_FILES


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Clips made with ffmpeg, each with a property a test pins down."""
    d = tmp_path_factory.mktemp("clips")
    out = {}
    # 10 s at 30 fps with a 3 s stereo 44.1 kHz tone: timestamps and audio resampling.
    out["cfr"] = d / "cfr.mp4"
    ffmpeg(
        *lavfi("testsrc2=size=320x240:rate=30:duration=10"),
        *lavfi("sine=frequency=440:sample_rate=44100:duration=3"),
        "-ac",
        "2",
        *H264,
        "-c:a",
        "aac",
        "-t",
        "10",
        str(out["cfr"]),
    )
    # Variable frame rate: 2 s at 5 fps, then 2 s at 30 fps.
    out["vfr"] = d / "vfr.mp4"
    ffmpeg(
        *variable_rate(2),
        str(out["vfr"]),
    )
    # Left half red, right half blue, stored with a 90 degree display rotation.
    plain = d / "halves.mp4"
    ffmpeg(
        *lavfi("color=c=red:size=64x64:duration=1:rate=10"),
        *lavfi("color=c=blue:size=64x64:duration=1:rate=10"),
        "-filter_complex",
        "[0:v][1:v]hstack",
        *H264,
        str(plain),
    )
    out["rotated"] = d / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(plain), "-c", "copy", str(out["rotated"]))
    out["halves"] = plain
    # 30 s with a keyframe every 0.2 s: keyframes are denser than 10 targets.
    out["dense_keys"] = d / "dense_keys.mp4"
    ffmpeg(
        *lavfi("testsrc2=size=160x120:rate=10:duration=30"),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "2",
        "-pix_fmt",
        "yuv420p",
        str(out["dense_keys"]),
    )
    return out


@pytest.fixture(scope="session")
def odd_clips(tmp_path_factory) -> dict[str, tuple[Path, bool, bool]]:
    """Legitimate files with awkward timing: name -> (path, has video, has audio)."""
    d = tmp_path_factory.mktemp("odd")
    src = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=6"]
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=6"]
    out: dict[str, tuple[Path, bool, bool]] = {}

    def make(name: str, args: list[str], video: bool = True, audio: bool = True) -> None:
        ffmpeg(*args, str(d / name))
        out[name] = (d / name, video, audio)

    make("long.ts", [*src, *tone, *H264, "-c:a", "aac", "-f", "mpegts"])  # 150 frames, 1.4 s start offset
    make("offset.mp4", [*src, *tone, *H264, "-c:a", "aac", "-output_ts_offset", "10"])
    make("audio_first.mkv", [*src, "-itsoffset", "-0.5", *tone, *H264, "-c:a", "libopus"])
    make("bframes.mp4", [*src, "-c:v", "libx264", "-preset", "medium", "-bf", "3", "-pix_fmt", "yuv420p"], audio=False)
    make(
        "open_gop.mp4",
        [
            *lavfi("testsrc2=size=160x120:rate=30:duration=20"),
            "-c:v",
            "libx264",
            "-preset",
            "medium",
            "-bf",
            "3",
            "-g",
            "30",
            "-x264-params",
            "open-gop=1",
            "-pix_fmt",
            "yuv420p",
        ],
        audio=False,
    )
    make("vfr.mkv", variable_rate(3), audio=False)
    ffmpeg(*src, *tone, *H264, "-c:a", "aac", "-bf", "2", "-g", "25", str(d / "gop.mp4"))
    make("edit_list.mp4", ["-ss", "1.3", "-i", str(d / "gop.mp4"), "-c", "copy"])  # starts mid-GOP
    make("rotated.mp4", ["-display_rotation", "90", "-i", str(d / "gop.mp4"), "-c", "copy"])
    make(
        "ntsc.mp4",
        [
            *lavfi("testsrc2=size=160x120:rate=30000/1001:duration=7"),
            *tone,
            *H264,
            "-c:a",
            "aac",
            "-shortest",
        ],
    )
    make("one_frame.mp4", [*src, *H264, "-frames:v", "1"], audio=False)
    make("silent_video.webm", [*src, "-c:v", "libvpx", "-b:v", "200k"], audio=False)
    make("audio_only.m4a", [*tone, "-c:a", "aac"], video=False)
    return out


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory) -> Path:
    """A private AVCHAT_HOME so the tests build the tiny preset themselves."""
    home = tmp_path_factory.mktemp("avchat-home")
    os.environ["AVCHAT_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny(tiny_home):
    from model import AVChatModel

    return AVChatModel.from_pretrained("tiny")
