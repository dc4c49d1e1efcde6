import os

import numpy as np
import pytest

from model.media import MediaError, extract_audio, load_media, plan_sampling, probe, sample_frames


def test_frames_are_taken_from_the_middle_of_equal_segments(clips):
    frames = sample_frames(str(clips["cfr"]), n=100, size=384)
    assert frames.frames.shape == (100, 384, 384, 3) and frames.frames.dtype == np.uint8
    expected = [(i + 0.5) * 0.1 for i in range(100)]
    assert max(abs(t - e) for t, e in zip(frames.timestamps, expected)) <= 1 / 30 / 2 + 1e-6
    assert frames.timestamps == sorted(frames.timestamps)


def test_clip_with_fewer_frames_than_asked_gives_every_frame(media_dir):
    frames = sample_frames(str(media_dir / "decord_video_90.mov"), n=100)
    assert frames.mode == "all" and len(frames.frames) == 3
    assert frames.timestamps == pytest.approx([0, 1 / 30, 2 / 30], abs=1e-3)


def test_rotation_metadata_is_honoured(clips, media_dir):
    info = probe(str(clips["rotated"]))
    assert info.rotation in (90, 270) and (info.width, info.height) == (64, 128)
    upright = sample_frames(str(clips["halves"]), n=1, size=64).frames[0].astype(int)
    turned = sample_frames(str(clips["rotated"]), n=1, size=64).frames[0].astype(int)
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
    frames = sample_frames(str(clips["vfr"]), n=20)
    targets = [(i + 0.5) * info.duration / 20 for i in range(20)]
    for t, target in zip(frames.timestamps, targets):
        spacing = 0.2 if target < 2 else 1 / 30
        assert abs(t - target) <= spacing / 2 + 1e-3


def test_long_clip_with_dense_keyframes_decodes_only_keyframes(clips):
    info = probe(str(clips["dense_keys"]))
    plan = plan_sampling(info, 10)
    assert plan.mode == "keyframe"
    frames = sample_frames(str(clips["dense_keys"]), n=10, size=64, info=info)
    keys = set(round(k, 3) for k in info.keyframe_times)
    assert all(round(t, 3) in keys for t in frames.timestamps)
    for i, t in enumerate(frames.timestamps):  # each sample stays inside its own segment
        assert 3 * i <= t < 3 * (i + 1)


def test_audio_is_16k_mono_float(clips):
    audio = extract_audio(str(clips["cfr"]))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 3 * 16000) < 1600
    assert 0.1 < np.abs(audio).max() < 0.2  # lavfi sine: amplitude 1/8
    # 440 Hz survives resampling: the spectrum peaks there.
    spectrum = np.abs(np.fft.rfft(audio[:16000]))
    assert abs(np.argmax(spectrum) - 440) <= 2


def test_audio_is_cut_to_the_window(media_dir):
    audio = extract_audio(str(media_dir / "whisper_jfk.flac"), max_seconds=5)
    assert len(audio) == 5 * 16000


def test_file_without_audio(media_dir):
    path = str(media_dir / "vllama_birthday.mp4")
    assert extract_audio(path) is None
    media = load_media(path)
    assert media.audio is None and media.frames.frames.shape[0] == 100


def test_audio_only_file(media_dir):
    media = load_media(str(media_dir / "whisper_jfk.flac"))
    assert media.frames is None and not media.info.has_video
    assert len(media.audio) == 11 * 16000


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
        load_media(str(path))
    message = str(err.value)
    assert path.name in message
    expected = {"text": "not a readable media file", "empty": "empty", "truncated": "truncated",
                "truncated_no_index": "not a readable media file", "missing": "no such file"}[kind]
    assert expected in message


def test_a_slow_decode_times_out_instead_of_hanging(media_dir):
    with pytest.raises(MediaError, match="longer than"):
        sample_frames(str(media_dir / "vllama_boat.mp4"), timeout=0.001)


def test_every_real_clip_decodes(media_files):
    for path in media_files:
        media = load_media(str(path))
        assert media.frames is not None or media.audio is not None, path
        if media.frames is not None:
            assert media.frames.frames.shape[1:] == (384, 384, 3)
            assert 1 <= len(media.frames.frames) <= 100
        assert os.path.exists(path)
