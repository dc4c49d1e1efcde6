"""Media decoding with real ffmpeg (whichever build the code runs; .ci/run runs this file with the
distribution's and the wheel's): sampling, audio, rotation, windows, and files a stranger sends."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from model.decoding import plan_sampling
from model.ffmpeg import run_job
from model.media import MediaError, MediaLimitError, MediaLimits, NotAContainerError, Window, check_file
from model.pipeline import decode
from model.presets import tiny_config
from model.probe import probe, probe_job
from tests.conftest import H264, ffmpeg, lavfi, make_secret_ts, make_two_tones

CONFIG = tiny_config()  # the real geometry: 100 frames at 384 px, one 30 s audio window


def frames_of(path, n=100, size=384, window=None, limits=None):
    cfg = tiny_config()
    cfg.num_frames, cfg.vision_config.image_size = n, size
    return decode(str(path), cfg, ["video"], window, limits).frames


def test_frames_are_taken_from_the_middle_of_equal_segments(clips):
    frames = frames_of(clips["cfr"])
    assert frames.frames.shape == (100, 384, 384, 3) and frames.frames.dtype == np.uint8
    expected = [(i + 0.5) * 0.1 for i in range(100)]
    assert max(abs(t - e) for t, e in zip(frames.timestamps, expected)) <= 1 / 30 / 2 + 1e-6
    assert frames.timestamps == sorted(frames.timestamps)


def test_the_chosen_frames_are_the_ones_decoded(tmp_path):
    """Each frame shows its own index (drawn into the picture), so the pixels prove which one came out."""
    path = tmp_path / "numbered.mp4"
    ffmpeg(
        *lavfi("color=c=black:size=64x64:rate=20:duration=10"),
        "-vf",
        "drawbox=x=0:y=0:w=64:h=64:color=white@1:t=fill:enable='lt(mod(n,2),1)'",
        *H264,
        "-f",
        "mpegts",
        str(path),
    )
    info = probe(str(path))
    frames = frames_of(path, n=10, size=32)
    for img, t in zip(frames.frames, frames.timestamps):
        index = round(t * 20)
        assert (img.mean() > 128) == (index % 2 == 0), (t, img.mean())
    assert info.num_frames == 200


def test_clip_with_fewer_frames_than_asked_gives_every_frame(media_dir):
    frames = frames_of(media_dir / "decord_video_90.mov")
    assert frames.mode == "all" and len(frames.frames) == 3
    assert frames.timestamps == pytest.approx([0, 1 / 30, 2 / 30], abs=1e-3)


def test_rotation_metadata_is_honoured(clips, media_dir):
    info = probe(str(clips["rotated"]))
    assert info.rotation in (90, 270) and (info.width, info.height) == (64, 128)
    upright = frames_of(clips["halves"], n=1, size=64).frames[0].astype(int)
    turned = frames_of(clips["rotated"], n=1, size=64).frames[0].astype(int)
    # Unrotated: red on the left, blue on the right. Rotated: the halves are above each other.
    assert upright[32, 5, 0] > 150 and upright[32, 58, 2] > 150
    top, bottom = turned[5, 32], turned[58, 32]
    assert {int(np.argmax(top)), int(np.argmax(bottom))} == {0, 2}
    real = probe(str(media_dir / "decord_video_90.mov"))
    assert (real.width, real.height) == (320, 568)


def test_variable_frame_rate_clip_is_sampled_by_time(clips):
    info = probe(str(clips["vfr"]))
    gaps = np.diff(info.frame_times)
    assert gaps.max() > 3 * gaps.min()  # really variable
    frames = frames_of(clips["vfr"], n=20)
    targets = [(i + 0.5) * info.duration / 20 for i in range(20)]
    for t, target in zip(frames.timestamps, targets):
        spacing = 0.2 if target < 2 else 1 / 30
        assert abs(t - target) <= spacing / 2 + 1e-3


def test_long_clip_with_dense_keyframes_decodes_only_keyframes(clips):
    info = probe(str(clips["dense_keys"]))
    assert plan_sampling(info, 10).mode == "keyframe"
    frames = frames_of(clips["dense_keys"], n=10, size=64)
    assert frames.mode == "keyframe"
    keys = {round(k, 3) for k in info.keyframe_times}
    assert all(round(t, 3) in keys for t in frames.timestamps)
    for i, t in enumerate(frames.timestamps):  # each sample stays inside its own segment
        assert 3 * i <= t < 3 * (i + 1)


def test_open_gop_keyframes_the_decoder_skips_fall_back_to_a_full_decode(odd_clips):
    path = odd_clips["open_gop.mp4"][0]
    info = probe(str(path))
    assert plan_sampling(info, 10).mode == "keyframe"  # the probe alone would choose keyframes
    frames = frames_of(path, n=10, size=64)
    assert frames.mode == "full" and len(frames.frames) == 10
    for i, t in enumerate(frames.timestamps):
        assert abs(t - (i + 0.5) * 2) <= 1 / 60 + 1e-3


@pytest.mark.parametrize(
    "name",
    [
        "long.ts",
        "offset.mp4",
        "audio_first.mkv",
        "bframes.mp4",
        "open_gop.mp4",
        "vfr.mkv",
        "edit_list.mp4",
        "rotated.mp4",
        "ntsc.mp4",
        "one_frame.mp4",
        "silent_video.webm",
        "audio_only.m4a",
    ],
)
def test_files_with_awkward_timing_decode_fully(odd_clips, name):
    path, has_video, has_audio = odd_clips[name]
    media = decode(str(path), CONFIG)
    info = media.info
    assert (media.frames is not None, media.audio is not None) == (has_video, has_audio)
    if has_video:
        expected = min(100, info.num_frames)
        assert len(media.frames.frames) == expected and media.report.frames == expected
        # Every target (the middle of one of 100 equal parts of the video stream) gets the frame
        # nearest it: chosen by index, whatever the timestamps' origin.
        if info.num_frames > 100:
            span = info.video_end - info.video_start
            times = np.array(info.frame_times)
            for k, t in enumerate(media.frames.timestamps):
                target = info.video_start + (k + 0.5) * span / 100
                assert abs(t - target) <= np.abs(times - target).min() + 1e-9, (k, t, target)
        assert media.frames.frames.std() > 1  # real pictures, not blank frames
    if has_audio:
        assert len(media.audio) >= 16000 * 4 and np.abs(media.audio).max() > 0.05


def test_audio_is_16k_mono_float(clips):
    audio = decode(str(clips["cfr"]), CONFIG, ["audio"]).audio
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 3 * 16000) < 1600
    assert 0.1 < np.abs(audio).max() < 0.2  # lavfi sine: amplitude 1/8
    # 440 Hz survives resampling: the spectrum peaks there.
    spectrum = np.abs(np.fft.rfft(audio[:16000]))
    assert abs(np.argmax(spectrum) - 440) <= 2


def test_audio_is_cut_to_the_window_and_the_report_says_what_was_not_heard(media_dir, tmp_path):
    cfg = tiny_config()
    cfg.audio_seconds = 5
    media = decode(str(media_dir / "whisper_jfk.flac"), cfg)
    assert len(media.audio) == 5 * 16000
    assert media.report.audio_s == pytest.approx(5, abs=0.01)
    assert media.report.audio_truncated_s == pytest.approx(6, abs=0.05)


def test_a_time_window_samples_inside_it_and_audio_starts_at_its_start(tmp_path):
    path = make_two_tones(tmp_path / "two_tones.mp4", 8)  # 300 Hz for 4 s, then 1200 Hz for 4 s
    media = decode(str(path), CONFIG, window=Window(4.5, 8.0))
    assert min(media.frames.timestamps) >= 4.5 and max(media.frames.timestamps) < 8.0
    assert len(media.frames.frames) == 87  # every frame of the 3.5 s span (fewer than 100)
    spectrum = np.abs(np.fft.rfft(media.audio[:16000]))
    assert abs(np.argmax(spectrum) - 1200) <= 3
    assert media.report.duration_s == pytest.approx(3.5) and media.report.audio_s == pytest.approx(3.5, abs=0.05)


@pytest.mark.parametrize(
    "start, end, fragment",
    [(12, None, "past the end"), (2, 1, "after start"), (-1, 3, "from 0"), (11, 50, "past the end")],
)
def test_a_window_outside_the_file_is_refused(clips, start, end, fragment):
    """A window that is not one is refused when made; one past the file when checked against it."""
    from model.media import InvalidWindow

    with pytest.raises(InvalidWindow, match=fragment):
        decode(str(clips["dense_keys"].with_name("cfr.mp4")), CONFIG, window=Window(start, end))


def test_file_without_audio(media_dir):
    media = decode(str(media_dir / "vllama_birthday.mp4"), CONFIG)
    assert media.audio is None and media.frames.frames.shape[0] == 100
    assert media.report.audio_s == 0


def test_audio_only_file(media_dir):
    media = decode(str(media_dir / "whisper_jfk.flac"), CONFIG)
    assert media.frames is None and not media.info.has_video
    assert len(media.audio) == 11 * 16000


@pytest.mark.parametrize("fmt, codec", [("png", "png"), ("jpg", "mjpeg"), ("webp", "libwebp"), ("gif", "gif")])
def test_still_images_are_one_frame_videos(tmp_path, fmt, codec):
    path = tmp_path / f"picture.{fmt}"
    ffmpeg(
        *lavfi("color=c=red:size=80x60:rate=5:duration=1"),
        "-frames:v",
        "1" if fmt != "gif" else "5",
        "-c:v",
        codec,
        str(path),
    )
    media = decode(str(path), CONFIG)
    assert media.info.is_image and media.frames.mode == "image" and len(media.frames.frames) == 1
    assert media.frames.frames[0, ..., 0].mean() > 180 and media.audio is None
    assert media.report.frames == 1 and media.report.duration_s == 0


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "truncated_no_index", "missing"])
def test_bad_files_raise_the_typed_error(kind, tmp_path, media_dir, clips):
    path = tmp_path / f"{kind}.mp4"
    if kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":  # index at the start, data cut off
        path.write_bytes((media_dir / "vllama_boat.mp4").read_bytes()[:300_000])
    elif kind == "truncated_no_index":  # index at the end, never reached
        path.write_bytes(clips["cfr"].read_bytes()[:20_000])
    with pytest.raises(MediaError) as err:
        decode(str(path), CONFIG)
    message = str(err.value)
    assert path.name in message
    expected = {
        "text": "not a readable media file",
        "empty": "empty",
        "truncated": "truncated",
        "truncated_no_index": "not a readable media file",
        "missing": "no such file",
    }[kind]
    assert expected in message


def test_a_slow_decode_times_out_instead_of_hanging(media_dir):
    with pytest.raises(MediaError, match="longer than"):
        frames_of(media_dir / "vllama_boat.mp4", limits=MediaLimits(timeout=0.001))


def test_every_real_clip_decodes(media_files):
    for path in media_files:
        media = decode(str(path), CONFIG)
        assert media.frames is not None or media.audio is not None, path
        if media.frames is not None:
            assert media.frames.frames.shape[1:] == (384, 384, 3)
            assert 1 <= len(media.frames.frames) <= 100


# -- files that point elsewhere ----------------------------------------------------------------------


class _Listener(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        _Listener.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    _Listener.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def hostile_files(d, target, url: str) -> dict[str, bytes]:
    """Files that name other files: an existing local clip (absolute and relative) or a URL."""
    rel = target.name
    return {
        "hls_absolute": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n".encode(),
        "hls_relative": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{rel}\n#EXT-X-ENDLIST\n".encode(),
        "hls_url": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{url}/seg.ts\n#EXT-X-ENDLIST\n".encode(),
        "dash": (
            f'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
            f'mediaPresentationDuration="PT10S"><BaseURL>{target}</BaseURL><Period><AdaptationSet>'
            f'<Representation id="1" bandwidth="1000" mimeType="video/mp2t"/></AdaptationSet></Period></MPD>\n'
        ).encode(),
        "ffconcat": f"ffconcat version 1.0\nfile '{rel}'\n".encode(),
        "sdp": f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video {url.rsplit(':', 1)[1]} "
        "RTP/AVP 96\na=rtpmap:96 H264/90000\n".encode(),
    }


@pytest.fixture
def hostile(tmp_path, listener):
    target = tmp_path / "secret.ts"  # a real, decodable local file the hostile files name
    make_secret_ts(target)
    files = {}
    for name, data in hostile_files(tmp_path, target, listener).items():
        files[name] = tmp_path / f"{name}.mp4"
        files[name].write_bytes(data)
    return files


@pytest.mark.parametrize("name", ["hls_absolute", "hls_relative", "hls_url", "dash", "ffconcat", "sdp"])
def test_playlists_and_manifests_are_refused_and_nothing_they_name_is_opened(hostile, name):
    with pytest.raises(NotAContainerError, match="points at other files, not a video"):
        decode(str(hostile[name]), CONFIG)
    assert _Listener.hits == []


@pytest.mark.parametrize("name", ["hls_absolute", "hls_relative", "hls_url", "dash", "ffconcat"])
def test_ffmpegs_own_allow_lists_refuse_them_too(hostile, name):
    """Without the first-bytes check, the demuxer and protocol allow-lists still stop them."""
    with pytest.raises(MediaError):
        run_job(probe_job(str(hostile[name]), MediaLimits()), str(hostile[name]))
    assert _Listener.hits == []


def test_check_file_names_images_for_their_own_demuxer(tmp_path):
    path = tmp_path / "frame_%03d.jpg"  # a name image2 would read as a sequence pattern
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:size=32x32", "-frames:v", "1", "-update", "1", str(path))
    assert check_file(str(path)) == "jpeg_pipe"
    assert decode(str(path), CONFIG).frames.mode == "image"


# -- budgets ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def decode_bomb(tmp_path_factory):
    """About 200 kB of H.264 that decodes to 8192 x 8192 frames."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.mp4"
    ffmpeg(
        *lavfi("color=c=black:size=8192x8192:rate=25"),
        "-frames:v",
        "10",
        *H264,
        str(path),
    )
    return path


def test_a_decode_bomb_is_refused_before_decoding_within_two_seconds(decode_bomb):
    started = time.perf_counter()
    with pytest.raises(MediaLimitError, match="8192x8192 pixels.*AVCHAT_MAX_PIXELS"):
        decode(str(decode_bomb), CONFIG)
    assert time.perf_counter() - started < 2.0


def test_too_many_packets_are_refused_naming_the_setting(clips):
    with pytest.raises(MediaLimitError, match="more than 50 packets.*AVCHAT_MAX_PACKETS"):
        decode(str(clips["cfr"]), CONFIG, limits=MediaLimits(max_packets=50))


def test_too_long_a_file_is_refused_naming_the_setting(clips):
    with pytest.raises(MediaLimitError, match="10 s long.*at most 5 s.*AVCHAT_MAX_VIDEO_SECONDS"):
        decode(str(clips["cfr"]), CONFIG, limits=MediaLimits(max_seconds=5))


def test_ffmpeg_runs_under_the_memory_cap(media_dir):
    """A cap far below what decoding needs makes ffmpeg fail cleanly: a MediaError, not a crash."""
    with pytest.raises(MediaError):
        frames_of(media_dir / "vllama_boat.mp4", limits=MediaLimits(memory_bytes=64 * 1024**2))


def test_the_decode_budget_counts_the_frames_ffmpeg_decodes_before_it_starts(tmp_path):
    """640x480, 240 frames, one keyframe: 100 samples need ~240 frames decoded (74 M pixels)."""
    clip = tmp_path / "vga.mp4"
    ffmpeg(*lavfi("testsrc2=size=640x480:rate=30:duration=8"), *H264, "-g", "300", str(clip))
    started = time.perf_counter()
    with pytest.raises(MediaLimitError, match="AVCHAT_MAX_DECODE_PIXELS") as err:
        decode(str(clip), CONFIG, ["video"], limits=MediaLimits(max_decode_pixels=60_000_000))
    assert time.perf_counter() - started < 2 and err.value.path == str(clip)
    span = decode(str(clip), CONFIG, ["video"], Window(0, 2), MediaLimits(max_decode_pixels=60_000_000))
    assert len(span.frames.timestamps) == 60  # every frame of a 2 s window: 18 M pixels, inside the budget


def _png_with_chunk(path, kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    ffmpeg(*lavfi("color=c=red:size=16x16"), "-frames:v", "1", str(path))
    png = path.read_bytes()
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


def test_a_png_with_big_compressed_text_is_refused_before_ffmpeg_inflates_it(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_with_chunk(tmp_path / "red.png", b"zTXt", b"Comment\0\0" + b"x" * 70_000))
    with pytest.raises(MediaLimitError, match="compressed text"):
        check_file(str(bomb))
    fine = tmp_path / "fine.png"
    fine.write_bytes(_png_with_chunk(tmp_path / "red2.png", b"tEXt", b"Comment\0" + b"hello"))
    assert check_file(str(fine)) == "png_pipe"


def test_a_png_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    ffmpeg(*lavfi("color=c=red:size=300x300"), "-frames:v", "1", str(tmp_path / "big.png"))
    with pytest.raises(MediaLimitError, match="300x300"):
        check_file(str(tmp_path / "big.png"), MediaLimits(max_pixels=200 * 200))


def test_a_media_error_carries_its_file_and_reason_apart(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0\0\0\x18ftypisom" + bytes(range(256)) * 16)
    with pytest.raises(MediaError) as err:
        decode(str(junk), CONFIG)
    assert err.value.path == str(junk) and str(tmp_path) not in err.value.reason
    assert str(err.value).startswith(str(junk) + ": ")  # the command line shows both


def test_the_media_budgets_have_one_reader_and_one_set_of_defaults(monkeypatch):
    for variable in MediaLimits.ENV.values():
        monkeypatch.delenv(variable, raising=False)
    assert MediaLimits.from_env() == MediaLimits() and MediaLimits().max_seconds == 3600
    monkeypatch.setenv("AVCHAT_MAX_VIDEO_SECONDS", "0")
    monkeypatch.setenv("AVCHAT_MAX_DECODE_PIXELS", "123")
    limits = MediaLimits.from_env()
    assert limits.max_seconds is None and limits.max_decode_pixels == 123


@pytest.mark.parametrize("start, end", [(-1, None), (3, 3), (0, float("nan")), (1e9, None)])
def test_a_window_that_is_not_one_is_refused_when_made(start, end):
    from model.media import InvalidWindow

    with pytest.raises(InvalidWindow):
        Window(start, end)


def test_a_window_that_ends_past_the_file_ends_with_it(clips):
    """README's `end=30` works on any clip: the span is clipped, and the report says so."""
    media = decode(str(clips["cfr"]), CONFIG, window=Window(8, 30))
    assert media.report.duration_s == pytest.approx(2.0, abs=0.05) and media.report.audio_s == 0  # tone ends at 3 s
