"""API features through both the official openai SDK and ours, against the real service on the
built-in demo model: OpenAI's output `modalities` and our `input_modalities`, images, reuse by
`uuid`, file:// URLs under an allowed folder, time windows, the `media` report, generation
defaults from the checkpoint, and the engine `auto` picks on a CPU."""

from __future__ import annotations

import base64
import json
import os
import shutil

import httpx
import openai
import pytest

from clients import Client, image_url_part, video_url_part
from tests.conftest import ffmpeg, make_two_tones
from tests.servers import ROOT, Server

SAMPLE = ROOT / "model" / "demo" / "sample.mp4"
QUESTION = "What colour is the square, and what do you hear?"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The folder file:// URLs may name, with a clip inside and a link that points outside."""
    folder = tmp_path_factory.mktemp("local-media")
    shutil.copy(SAMPLE, folder / "sample.mp4")
    outside = tmp_path_factory.mktemp("outside") / "secret.mp4"
    shutil.copy(SAMPLE, outside)
    os.symlink(outside, folder / "link.mp4")
    return folder


@pytest.fixture(scope="module")
def demo(local, tmp_path_factory):
    srv = Server(
        {
            "AVCHAT_MODEL": "demo",
            "AVCHAT_ALLOWED_LOCAL_MEDIA_PATH": str(local),
            "AVCHAT_TEMP_DIR": str(tmp_path_factory.mktemp("api-tmp")),
        },
        tmp_path_factory.mktemp("logs") / "api.log",
    )
    yield srv.wait_ready()
    srv.stop()


@pytest.fixture(scope="module")
def oai(demo):
    return openai.OpenAI(base_url=demo.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def sdk(demo):
    with Client(base_url=demo.url, max_retries=0) as c:
        yield c


def _data_url(path, mime="video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _video_part(url: str, **extra) -> dict:
    return {"type": "video_url", "video_url": {"url": url, **extra.pop("video_url", {})}, **extra}


def _ask(oai, part: dict | None, question=QUESTION, **kwargs):
    content = [{"type": "text", "text": question}] + ([part] if part else [])
    return oai.chat.completions.create(model="demo", messages=[{"role": "user", "content": content}], **kwargs)


def test_auto_picks_the_transformers_engine_on_a_cpu(demo):
    assert httpx.get(demo.url + "/v1/models").json()["data"][0]["engine"] == "transformers"


def test_greedy_by_the_checkpoints_defaults_and_no_separator_space(demo, oai, sdk):
    answers = {_ask(oai, _video_part(_data_url(SAMPLE))).choices[0].message.content for _ in range(2)}
    assert answers == {"red, a high tone"}  # no temperature sent: the checkpoint says greedy
    ours = sdk.video.chat.create(video=SAMPLE, prompt=QUESTION)
    assert ours.choices[0].message.content == "red, a high tone"


def test_openai_output_modalities_and_input_modalities(demo, oai, sdk):
    text_only = _ask(oai, _video_part(_data_url(SAMPLE)), modalities=["text"])
    assert text_only.usage.prompt_tokens_details.audio_tokens == 64
    video_only = _ask(oai, _video_part(_data_url(SAMPLE)), extra_body={"input_modalities": ["video"]})
    details = video_only.usage.prompt_tokens_details
    assert (details.audio_tokens, details.video_tokens) == (0, 829)
    with pytest.raises(openai.UnprocessableEntityError, match="input_modalities"):
        _ask(oai, _video_part(_data_url(SAMPLE)), modalities=["audio"])
    ours = sdk.chat.completions.create(
        messages=[{"role": "user", "content": [{"type": "text", "text": "?"}, video_url_part(SAMPLE)]}],
        input_modalities=["audio"],
    )
    assert ours.usage.prompt_tokens_details.video_tokens == 0 and ours.media.frames == 0
    form = sdk.video.chat.create(video=SAMPLE, prompt="?", modalities="video")  # the form's older name
    assert form.usage.prompt_tokens_details.audio_tokens == 0


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=200x120", "-frames:v", "1", str(path))
    return path


def test_images_are_one_frame_videos(demo, oai, sdk, picture):
    r = _ask(
        oai, {"type": "image_url", "image_url": {"url": _data_url(picture, "image/png")}}, "What colour is the square?"
    )
    assert r.usage.prompt_tokens_details.video_tokens == 829 and r.usage.prompt_tokens_details.audio_tokens == 0
    seen = {"duration_s": 0.0, "frames": 1, "audio_s": 0.0, "audio_truncated_s": 0.0}
    assert r.model_extra["media"] == {**seen, "parts": [{**seen, "video_id": r.model_extra["video_id"]}]}
    ours = sdk.video.chat.create(image=picture, prompt="What colour is the square?")
    assert ours.media.frames == 1 and ours.usage.prompt_tokens_details.video_tokens == 829
    also = sdk.chat.completions.create(
        messages=[{"role": "user", "content": [{"type": "text", "text": "?"}, image_url_part(picture)]}]
    )
    assert also.media.frames == 1


def test_a_uuid_names_a_video_for_reuse_without_resending(demo, oai, sdk):
    first = _ask(oai, _video_part(_data_url(SAMPLE), uuid="my-clip"))
    decodes, hits = _metric(demo.url, "avchat_decode_seconds_count"), _cache_hits(demo.url)
    again = _ask(oai, {"type": "video_url", "uuid": "my-clip"})  # no URL, no bytes
    assert again.choices[0].message.content == first.choices[0].message.content
    assert _metric(demo.url, "avchat_decode_seconds_count") == decodes and _cache_hits(demo.url) == hits + 1
    by_id = _ask(oai, {"type": "video_url", "uuid": first.model_extra["video_id"]})  # a video_id is a uuid too
    assert by_id.usage.prompt_tokens == first.usage.prompt_tokens
    with pytest.raises(openai.NotFoundError):
        _ask(oai, {"type": "video_url", "uuid": "never-named"})
    ours = sdk.video.chat.create(video=SAMPLE, uuid="sdk-clip", prompt="?")
    reused = sdk.video.chat.create(uuid="sdk-clip", prompt="?")
    assert reused.video_id == ours.video_id
    reused_part = sdk.chat.completions.create(
        messages=[{"role": "user", "content": [{"type": "text", "text": "?"}, video_url_part(uuid="sdk-clip")]}]
    )
    assert reused_part.video_id == ours.video_id


def test_file_urls_are_read_only_under_the_allowed_folder(demo, oai, local):
    ok = _ask(oai, _video_part(f"file://{local / 'sample.mp4'}"))
    assert ok.choices[0].message.content == "red, a high tone"
    assert (local / "sample.mp4").exists()  # used in place, never removed
    for url in (
        f"file://{local / 'link.mp4'}",
        f"file://{local}/../outside/secret.mp4",
        "file:///etc/passwd",
        f"file://{local / 'missing.mp4'}",
    ):
        with pytest.raises(openai.BadRequestError):
            _ask(oai, _video_part(url))


@pytest.fixture(scope="module")
def two_tones(tmp_path_factory):
    """40 s: 300 Hz for 4 s, then 1200 Hz (longer than Whisper's 30 s window)."""
    return make_two_tones(tmp_path_factory.mktemp("tones") / "tones.mp4", 40)


def test_time_windows_and_the_media_report(demo, oai, sdk, two_tones):
    whole = sdk.video.chat.create(video=two_tones, prompt="?")
    assert whole.media.duration_s == pytest.approx(40, abs=0.1) and whole.media.frames == 100
    assert whole.media.audio_s == pytest.approx(40, abs=0.1) and whole.media.audio_truncated_s == 0  # two windows
    assert whole.usage.prompt_tokens_details.audio_tokens == 2 * 64
    one = sdk.video.chat.create(video=two_tones, prompt="?", max_audio_windows=1)  # the paper's one window
    assert one.media.audio_s == pytest.approx(30, abs=0.1) and one.media.audio_truncated_s == pytest.approx(10, abs=0.2)
    assert one.usage.prompt_tokens_details.audio_tokens == 64 and one.video_id == whole.video_id  # the same features
    window = sdk.video.chat.create(video=two_tones, prompt="?", start=4.5, end=8)
    assert window.media.duration_s == pytest.approx(3.5) and window.media.frames == 87
    assert window.media.audio_truncated_s == 0 and window.video_id != whole.video_id
    r = _ask(oai, _video_part(_data_url(two_tones), video_url={"start": 10, "end": 20}))
    assert r.model_extra["media"]["duration_s"] == pytest.approx(10)
    chunks = list(
        _ask(
            oai,
            _video_part(_data_url(two_tones), video_url={"start": 10}),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].model_extra["media"]["audio_s"] == pytest.approx(30, abs=0.1)
    assert all(c.model_extra.get("media") is None for c in chunks[:-1])
    with pytest.raises(openai.BadRequestError, match="past the end"):
        _ask(oai, _video_part(_data_url(two_tones), video_url={"start": 50}))
    late = sdk.video.chat.create(video=two_tones, prompt="?", start=30, end=45, max_tokens=2)  # ends with the file
    assert late.media.duration_s == pytest.approx(10, abs=0.1) and late.media.audio_s == pytest.approx(10, abs=0.1)


def test_sampling_defaults_follow_a_checkpoint_that_samples(tiny, tiny_home, media_dir, tmp_path):
    checkpoint = tmp_path / "sampling"
    shutil.copytree(tiny.source, checkpoint)
    config = json.loads((checkpoint / "llm" / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=7)
    (checkpoint / "llm" / "generation_config.json").write_text(json.dumps(config))
    srv = Server(
        {"AVCHAT_HOME": str(tiny_home), "AVCHAT_MODEL": str(checkpoint), "AVCHAT_ENGINE": "transformers"},
        tmp_path / "sampling.log",
    )
    try:
        srv.wait_ready()
        with Client(base_url=srv.url) as c:
            texts = {
                c.video.chat.create(video=media_dir / "vllama_boat.mp4", prompt="?", seed=s).choices[0].message.content
                for s in range(4)
            }
            lengths = {
                c.video.chat.create(video=media_dir / "vllama_boat.mp4", prompt="?", seed=s).usage.completion_tokens
                for s in range(2)
            }
            greedy = {
                c.video.chat.create(video=media_dir / "vllama_boat.mp4", prompt="?", temperature=0, max_tokens=5)
                .choices[0]
                .message.content
                for _ in range(2)
            }
        assert len(texts) > 1  # sampled: different seeds, different answers
        assert max(lengths) <= 7  # the checkpoint's max_new_tokens
        assert len(greedy) == 1  # the request's temperature wins
    finally:
        srv.stop()


def _metric(url: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(url + "/metrics").text.splitlines()
        if line.startswith(name + " ")
    )


def _cache_hits(url: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(url + "/metrics").text.splitlines()
        if line.startswith('avchat_feature_cache_total{result="hit"}')
    )
