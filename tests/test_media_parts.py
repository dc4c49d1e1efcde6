"""Media as harnesses and OpenAI clients send them, through the official openai SDK and ours,
against the real service on the demo model: several ``image_url`` parts as one video's frames
(as lmms-eval sends a video), OpenAI's ``input_audio`` and ``audio_url`` parts (heard only),
several media in one conversation (each its own block of tokens), and the refusals: too many
frames, a frame that is not an image, an audio format or a part type not taken, too many media,
media over the context. Frames, audio and a second clip are made from the demo's sample clip
with ffmpeg here."""

from __future__ import annotations

import base64
import shutil

import openai
import pytest

from clients import (
    Client,
    audio_url_part,
    frame_parts,
    input_audio_part,
    reused_parts,
    user_message,
    video_url_part,
)
from tests.conftest import ffmpeg
from tests.servers import ROOT, Server

SAMPLE = ROOT / "model" / "demo" / "sample.mp4"  # a red square moving sideways, a high tone


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The allowed local folder: 8 PNG frames of the sample, and its sound as WAV and MP3."""
    folder = tmp_path_factory.mktemp("parts")
    ffmpeg("-i", str(SAMPLE), "-vf", "fps=4", "-frames:v", "8", str(folder / "frame%02d.png"))
    ffmpeg("-i", str(SAMPLE), "-vn", "-ac", "1", "-ar", "16000", str(folder / "sound.wav"))
    ffmpeg("-i", str(SAMPLE), "-vn", "-c:a", "libmp3lame", "-b:a", "64k", str(folder / "sound.mp3"))
    ffmpeg("-i", str(SAMPLE), "-an", "-c:v", "copy", str(folder / "silent.mp4"))
    ffmpeg("-i", str(SAMPLE), "-vf", "hflip", "-c:a", "copy", str(folder / "mirrored.mp4"))  # another video
    shutil.copy(SAMPLE, folder / "sample.mp4")
    return folder


@pytest.fixture(scope="module")
def temp(tmp_path_factory):
    return tmp_path_factory.mktemp("parts-tmp")


@pytest.fixture(scope="module")
def served(local, temp, tmp_path_factory):
    srv = Server(
        {
            "AVCHAT_MODEL": "demo",
            "AVCHAT_ENGINE": "transformers",
            "AVCHAT_ALLOWED_LOCAL_MEDIA_PATH": str(local),
            "AVCHAT_TEMP_DIR": str(temp),
        },
        tmp_path_factory.mktemp("logs") / "parts.log",
    )
    yield srv.wait_ready()
    srv.stop()
    assert "Traceback" not in srv.log_text()


@pytest.fixture(scope="module")
def oai(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


def _data(path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _ask(oai, parts: list[dict], question: str, **kwargs):
    content = [{"type": "text", "text": question}, *parts]
    return oai.chat.completions.create(model="demo", messages=[{"role": "user", "content": content}], **kwargs)


def _details(r) -> dict:
    return r.usage.prompt_tokens_details.model_dump()


def _frames(local) -> list:
    return sorted(local.glob("frame*.png"))


def test_image_url_frames_are_onevideo_url_part(served, oai, local, temp):
    frames = _frames(local)
    assert len(frames) == 8
    inline = [{"type": "image_url", "image_url": {"url": _data(f, "image/png")}} for f in frames]
    r = _ask(oai, inline, "What colour is the square?", max_tokens=4)
    assert r.choices[0].message.content.strip() == "red"
    assert _details(r)["video_tokens"] == 829  # pooled as a file's frames are
    assert _details(r)["audio_tokens"] == 0
    seen = {"duration_s": 0.0, "frames": 8, "audio_s": 0.0, "audio_truncated_s": 0.0}
    assert r.model_extra["media"] == {**seen, "parts": [{**seen, "video_id": r.model_extra["video_id"]}]}
    # the same frames as file:// URLs (read in place), mixed with inline ones: the same video
    mixed = [{"type": "image_url", "image_url": {"url": f"file://{f}"}} for f in frames[:4]] + inline[4:]
    again = _ask(oai, mixed, "What colour is the square?", max_tokens=4)
    assert again.model_extra["video_id"] == r.model_extra["video_id"]
    # the order is the video's: reversed frames are another video
    backwards = _ask(oai, inline[::-1], "What colour is the square?", max_tokens=4)
    assert backwards.model_extra["video_id"] != r.model_extra["video_id"]
    with Client(base_url=served.url, max_retries=0) as sdk:  # our SDK sends them too
        content = [{"type": "text", "text": "What colour is the square?"}, *frame_parts(frames)]
        ours = sdk.chat.completions.create(messages=[{"role": "user", "content": content}], max_tokens=4)
    assert ours.choices[0].message.content.strip() == "red"
    assert list(temp.iterdir()) == []  # every frame's temp file removed


def test_frames_past_the_limit_or_not_images_are_refused(oai, local):
    one = {"type": "image_url", "image_url": {"url": _data(_frames(local)[0], "image/png")}}
    with pytest.raises(openai.BadRequestError) as err:
        _ask(oai, [one] * 101, "What colour is the square?")
    assert err.value.code == "too_many_frames" and "at most 100" in err.value.message
    video = {"type": "image_url", "image_url": {"url": _data(SAMPLE, "image/png")}}
    with pytest.raises(openai.BadRequestError, match="frame 2 of the image_url frames is not a still image"):
        _ask(oai, [one, video, one], "What colour is the square?")
    with pytest.raises(openai.BadRequestError, match="not to frames"):
        part = {"type": "image_url", "image_url": {"url": _data(_frames(local)[0], "image/png"), "start": 1}}
        _ask(oai, [one, part], "What colour is the square?")


def test_input_audio_and_audio_url_are_heard(served, oai, local, temp):
    wav = local / "sound.wav"
    encoded = base64.b64encode(wav.read_bytes()).decode()
    inline = {"type": "input_audio", "input_audio": {"data": encoded, "format": "wav"}}
    r = _ask(oai, [inline], "What do you hear?", max_tokens=6)
    assert r.choices[0].message.content.strip() == "a high tone"
    details = _details(r)
    assert (details["audio_tokens"], details["video_tokens"]) == (64, 0)
    assert r.model_extra["media"]["audio_s"] == pytest.approx(2.0, abs=0.1)
    for part in (
        input_audio_part(local / "sound.mp3"),
        {"type": "audio_url", "audio_url": {"url": _data(wav, "audio/wav")}},
        {"type": "audio_url", "audio_url": {"url": f"file://{local / 'sound.mp3'}"}},
        audio_url_part(url=f"file://{local / 'sample.mp4'}"),  # a video's sound track, heard only
    ):
        answer = _ask(oai, [part], "What do you hear?", max_tokens=6)
        assert answer.choices[0].message.content.strip() == "a high tone", part
        assert _details(answer)["video_tokens"] == 0
    assert list(temp.iterdir()) == []


def test_audio_parts_are_refused_cleanly(oai, local):
    data = base64.b64encode((local / "sound.wav").read_bytes()).decode()
    with pytest.raises(openai.UnprocessableEntityError, match="input_audio.format: takes wav") as err:
        _ask(oai, [{"type": "input_audio", "input_audio": {"data": data, "format": "midi"}}], "?")
    assert err.value.param == "messages.0.content.1.input_audio.format"
    with pytest.raises(openai.BadRequestError, match="not valid base64"):
        _ask(oai, [{"type": "input_audio", "input_audio": {"data": "a", "format": "wav"}}], "?")
    with pytest.raises(openai.BadRequestError, match="heard, not seen"):
        _ask(oai, [input_audio_part(local / "sound.wav")], "?", extra_body={"input_modalities": ["video"]})
    with pytest.raises(openai.BadRequestError) as err:
        _ask(oai, [{"type": "input_file", "file": {"file_id": "x"}}], "?")
    assert err.value.code == "unsupported_content_part" and err.value.param == "messages.0.content.1.type"
    assert "input_audio, audio_url" in err.value.message


def test_two_videos_each_get_their_own_block_and_their_own_id(served, oai, local, temp):
    videos = [SAMPLE, local / "mirrored.mp4"]
    alone = [_ask(oai, [video_url_part(v)], "What colour is the square?", max_tokens=4) for v in videos]
    assert alone[0].model_extra["video_id"] != alone[1].model_extra["video_id"]
    content = [{"type": "text", "text": "Which way does the square move in each?"}, *map(video_url_part, videos)]
    # no max_tokens: the answer gets the room the two videos leave (the default, 256, would not fit)
    r = oai.chat.completions.create(model="demo", messages=[{"role": "user", "content": content}])
    assert _details(r)["video_tokens"] == 2 * 829 and _details(r)["audio_tokens"] == 2 * 64
    assert r.usage.total_tokens <= 2048 and r.choices[0].message.content
    media = r.model_extra["media"]
    ids = [a.model_extra["video_id"] for a in alone]
    assert [p["video_id"] for p in media["parts"]] == ids  # each medium cached by its own content
    assert r.model_extra["video_id"] == ids[0]
    assert media["frames"] == sum(p["frames"] for p in media["parts"]) == 2 * alone[0].model_extra["media"]["frames"]
    assert media["audio_s"] == pytest.approx(2 * alone[0].model_extra["media"]["audio_s"])
    # a follow-up names each by its id: nothing is sent again, the layout is the same
    history = [
        {"role": "user", "content": [content[0], *({"type": "video_url", "uuid": i} for i in ids)]},
        {"role": "assistant", "content": r.choices[0].message.content},
        {"role": "user", "content": "And which is which?"},
    ]
    follow = oai.chat.completions.create(model="demo", messages=history, max_tokens=4)
    assert _details(follow)["video_tokens"] == 2 * 829
    assert [p["video_id"] for p in follow.model_extra["media"]["parts"]] == ids
    assert list(temp.iterdir()) == []


def test_a_video_and_a_sound_from_another_file(served, oai, local):
    r = _ask(
        oai,
        [video_url_part(local / "silent.mp4"), input_audio_part(local / "sound.wav")],
        "What is there?",
        max_tokens=4,
    )
    assert (_details(r)["video_tokens"], _details(r)["audio_tokens"]) == (829, 64)
    video, sound = r.model_extra["media"]["parts"]
    assert video["frames"] > 0 and video["audio_s"] == 0  # the silent video has no sound to hear
    assert sound["frames"] == 0 and sound["audio_s"] == pytest.approx(2.0, abs=0.1)
    both = _ask(oai, [video_url_part(SAMPLE), audio_url_part(url=f"file://{local / 'sound.mp3'}")], "?", max_tokens=4)
    assert _details(both)["audio_tokens"] == 2 * 64  # the video's own sound and the other file's
    with Client(base_url=served.url, max_retries=0) as sdk:  # our SDK's helpers
        message = user_message(
            "What is there?", video_url_part(local / "silent.mp4"), input_audio_part(local / "sound.wav")
        )
        ours = sdk.chat.completions.create(messages=[message], max_tokens=4)
        assert [p.video_id for p in ours.media.parts] == [p["video_id"] for p in (video, sound)]
        again = sdk.chat.completions.create(messages=[user_message("And now?", *reused_parts(ours))], max_tokens=4)
    assert again.usage.prompt_tokens_details.audio_tokens == 64 and again.media.parts[1].audio_s == sound["audio_s"]


def test_too_many_media_or_more_than_the_context_are_refused(served, oai, local, temp):
    sound = input_audio_part(local / "sound.wav")
    with pytest.raises(openai.BadRequestError, match="9 media in one conversation; at most 8") as err:
        _ask(oai, [sound] * 9, "?")
    assert err.value.code == "too_many_media"
    with pytest.raises(openai.BadRequestError, match=r"\d+ over the model's context of 2048 tokens; send fewer") as err:
        _ask(oai, [video_url_part(SAMPLE)] * 3, "?")  # 3 x 829 video tokens
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="over the model's context") as err:
        _ask(oai, [video_url_part(SAMPLE)] * 2, "?", max_tokens=512)  # asked for: not shortened
    assert list(temp.iterdir()) == []
