"""Media as harnesses and OpenAI clients send them, through the official openai SDK and ours,
against the real service on the demo model: several ``image_url`` parts as one video's frames
(as lmms-eval sends a video), OpenAI's ``input_audio`` and ``audio_url`` parts (heard only),
and the refusals: too many frames, a frame that is not an image, an audio format or a part type
not taken, a second medium. Frames and audio are cut from the demo's sample clip with ffmpeg
here."""

from __future__ import annotations

import base64
import shutil

import openai
import pytest

from clients import Client, audio_url_part, frame_parts, input_audio_part
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


def test_image_url_frames_are_one_video(served, oai, local, temp):
    frames = _frames(local)
    assert len(frames) == 8
    inline = [{"type": "image_url", "image_url": {"url": _data(f, "image/png")}} for f in frames]
    r = _ask(oai, inline, "What colour is the square?", max_tokens=4)
    assert r.choices[0].message.content.strip() == "red"
    assert _details(r)["video_tokens"] == 829  # pooled as a file's frames are
    assert _details(r)["audio_tokens"] == 0
    assert r.model_extra["media"] == {"duration_s": 0.0, "frames": 8, "audio_s": 0.0, "audio_truncated_s": 0.0}
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
    with pytest.raises(openai.BadRequestError, match="one video_url, audio part"):
        _ask(oai, [input_audio_part(local / "sound.wav"), frame_parts(_frames(local)[:1])[0]], "?")
    with pytest.raises(openai.BadRequestError) as err:
        _ask(oai, [{"type": "input_file", "file": {"file_id": "x"}}], "?")
    assert err.value.code == "unsupported_content_part" and err.value.param == "messages.0.content.1.type"
    assert "input_audio, audio_url" in err.value.message
