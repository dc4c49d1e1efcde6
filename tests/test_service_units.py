"""Service pieces on their own: the feature cache's LRU and ownership, admission (generation
places and their Retry-After, upload places, the body memory budget), and the multipart form's
parsing into a request."""

from __future__ import annotations

import asyncio
import gc
import time

import psutil
import pytest
import torch

from model.ffmpeg import FfmpegJob, ffmpeg_exe
from model.media import MediaError, MediaLimits
from model.pipeline import MediaEmbeddings, MediaReport
from service.admission import Generations, MemoryBudget, UploadPool
from service.errors import AtCapacity, BadParameter, InvalidFields, UploadTooSlow, describe
from service.forms import parse_form
from service.media_worker import CachedMedia, FeatureCache, run_job
from service.protocol import parse_completion_request


def _item(owner: str, video_id: str, nbytes: int) -> CachedMedia:
    return CachedMedia(owner, video_id, MediaEmbeddings(torch.zeros(nbytes // 4), None), MediaReport(1, 1, 0, 0))


def test_the_cache_evicts_the_least_recently_used_within_its_budget():
    cache = FeatureCache(budget_bytes=1000)
    for name in ("a", "b", "c"):
        cache.put(_item("o", name, 400))
    assert len(cache) == 2 and cache.get("o", "a") is None and cache.used == 800
    assert cache.get("o", "b") is not None  # b is now the most recent
    cache.put(_item("o", "d", 400))
    assert cache.get("o", "c") is None and cache.get("o", "b") is not None
    cache.put(_item("o", "huge", 5000))  # over the whole budget: not kept, nothing evicted for it
    assert cache.get("o", "huge") is None and len(cache) == 2


def test_the_cache_answers_only_the_owner_and_their_aliases():
    cache = FeatureCache(budget_bytes=10_000)
    cache.put(_item("alice", "vid-1", 100))
    assert cache.get("bob", "vid-1") is None and cache.get("alice", "vid-1") is not None
    cache.alias("alice", "holiday", "vid-1")
    assert cache.get("alice", "holiday").video_id == "vid-1" and cache.get("bob", "holiday") is None


def test_generations_refuse_past_their_limit_with_a_retry_after_from_the_work_queued():
    gens = Generations(concurrency=2, queue=1)
    tickets = [gens.take(max_tokens=100) for _ in range(3)]
    gens.setup_s.add(1.0)
    gens.token_s.add(0.2)  # 1 s + 100 tokens x 0.2 s = 21 s for each of 3 requests, 2 at a time
    with pytest.raises(AtCapacity) as err:
        gens.take(max_tokens=10)
    assert 30 <= int(err.value.headers["Retry-After"]) <= 32
    tickets[0].release()
    tickets[0].release()  # idempotent
    assert len(gens.held) == 2
    gens.take(max_tokens=10)


def test_a_ticket_measures_time_to_first_token_and_per_token():
    gens = Generations(concurrency=1, queue=0)
    ticket = gens.take(max_tokens=5)
    ticket.taken -= 2.0  # admitted 2 s ago
    ticket.started()
    ticket.first_token -= 1.0  # first token 1 s ago: 1 s to it, 4 more tokens in 1 s
    ticket.release(tokens=5)
    assert gens.setup_s.value == pytest.approx(1.0, abs=0.05)
    assert gens.token_s.value == pytest.approx(0.25, abs=0.05)


def test_a_full_upload_pool_gives_the_slowest_place_to_a_newcomer():
    pool = UploadPool(places=2, fair_bytes_s=1000, tenure_s=1.0)
    slow, fast = pool.take(), pool.take()
    for u, rate in ((slow, 10), (fast, 5000)):
        u.started -= 2.0
        u.received = int(rate * 2)
    newcomer = pool.take()  # the slow one is ended, the fast one keeps its place
    assert slow.evicted and not fast.evicted and len(pool.holders) == 2
    with pytest.raises(UploadTooSlow, match="make room"):
        slow.add(1)
    newcomer.started -= 2.0
    newcomer.received = 1_000_000
    with pytest.raises(AtCapacity) as err:  # everyone fast: nobody gives way
        pool.take()
    assert int(err.value.headers["Retry-After"]) >= 1
    fast.release()
    pool.take()


def test_a_new_upload_never_takes_the_place_of_one_that_has_not_had_its_window():
    pool = UploadPool(places=1, fair_bytes_s=1000, tenure_s=10.0)
    pool.take()  # just started, nothing sent yet
    with pytest.raises(AtCapacity):
        pool.take()


def test_the_memory_budget_counts_every_request_together():
    budget = MemoryBudget(total=1000)
    budget.reserve(600)
    with pytest.raises(AtCapacity):
        budget.reserve(500)
    budget.release(600)
    budget.reserve(1000)


def test_generations_run_at_most_concurrency_at_once():
    async def run():
        gens = Generations(concurrency=2, queue=5)
        running, peak = 0, 0

        async def one():
            nonlocal running, peak
            async with gens.slot():
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.01)
                running -= 1

        await asyncio.gather(*(one() for _ in range(6)))
        return peak

    assert asyncio.run(run()) == 2


def test_the_form_becomes_a_request():
    chat = parse_form(
        {
            "prompt": "What?",
            "stream": "true",
            "stream_options": '{"include_usage": true}',
            "stop": '["a", "b"]',
            "input_modalities": "video",
            "start": "1.5",
            "end": "4",
            "temperature": "0.5",
            "seed": "7",
            "uuid": "clip-1",
        },
        "video",
    )
    assert chat.messages == [{"role": "user", "content": "What?"}] and chat.stream and chat.include_usage
    assert chat.stop == ["a", "b"] and chat.input_modalities == ["video"] and chat.seed == 7
    [media] = chat.media
    assert (media.window.start, media.window.end) == (1.5, 4.0) and media.alias == "clip-1"
    params = chat.to_sampling_params({"temperature": 0.0, "max_tokens": 99}, 256)
    assert params.temperature == 0.5 and params.max_tokens == 99  # the request's value wins, the default fills
    assert parse_form({"prompt": "?", "modalities": "audio"}, None).input_modalities == ["audio"]  # the older name
    follow = parse_form({"prompt": "?", "video_id": "vid-9"}, None)
    assert [(m.kind, m.value) for m in follow.media] == [("video_id", "vid-9")]
    for fields, error in (
        ({"prompt": "?", "stop": "[1]"}, BadParameter),
        ({"prompt": "?", "seed": "x"}, InvalidFields),
        ({"messages": "[]", "prompt": "?"}, BadParameter),
    ):
        with pytest.raises(error):
            parse_form(fields, "video")


def test_openai_requests_take_output_modalities_and_input_modalities():
    base = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "?"}, {"type": "video_url", "uuid": "clip-1"}]}
        ]
    }
    chat = parse_completion_request({**base, "modalities": ["text"], "input_modalities": ["video"]})
    assert chat.input_modalities == ["video"] and [(m.kind, m.value) for m in chat.media] == [("uuid", "clip-1")]
    with pytest.raises(InvalidFields):
        parse_completion_request({**base, "modalities": ["audio"]})
    status, body, _ = describe(InvalidFields("x", param="modalities"))
    assert status == 422 and body["error"]["param"] == "modalities"


def _parts(*parts) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, *parts]}]}


def test_image_url_parts_are_frames_and_audio_parts_are_heard_only():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    [frames] = parse_completion_request(
        _parts(image, {"type": "image_url", "image_url": {"url": "file:///d/2.png"}})
    ).media
    assert frames.kind == "frames" and frames.frames == ["data:image/png;base64,AAAA", "file:///d/2.png"]
    assert [m.kind for m in parse_completion_request(_parts(image)).media] == ["url"]  # one image is an image
    with pytest.raises(BadParameter, match="at most 100") as err:
        parse_completion_request(_parts(*[image] * 101))
    assert err.value.code == "too_many_frames"
    [audio] = parse_completion_request(
        _parts({"type": "input_audio", "input_audio": {"data": "UklG", "format": "WAV"}})
    ).media
    assert (audio.kind, audio.value, audio.modalities) == ("base64", "UklG", ["audio"])
    [url] = parse_completion_request(
        _parts({"type": "audio_url", "audio_url": {"url": "https://a/b.mp3", "end": 5}})
    ).media
    assert (url.kind, url.param, url.window.end, url.modalities) == ("url", "audio_url", 5, ["audio"])
    with pytest.raises(InvalidFields, match="input_audio.format: takes wav"):
        parse_completion_request(_parts({"type": "input_audio", "input_audio": {"data": "", "format": "midi"}}))


def test_several_media_are_each_one_medium_in_conversation_order():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    video = {"type": "video_url", "video_url": {"url": "https://a/v.mp4", "start": 2}}
    sound = {"type": "audio_url", "audio_url": {"url": "https://a/b.mp3"}}
    text = {"type": "text", "text": "and"}
    body = {
        "messages": [
            {"role": "user", "content": [text, video, image, image, text, image, sound]},
            {"role": "assistant", "content": "Seen."},
            {"role": "user", "content": [{"type": "video_url", "uuid": "clip-1"}, text]},
        ]
    }
    media = parse_completion_request(body).media
    assert [(m.kind, m.message) for m in media] == [
        ("url", 0),
        ("frames", 0),
        ("url", 0),
        ("url", 0),
        ("uuid", 2),
    ]  # two image_url parts in a row are one video's frames; text between them ends the run
    assert media[0].window.start == 2 and media[3].modalities == ["audio"] and media[1].modalities is None
    with pytest.raises(BadParameter, match="at most 8") as err:
        parse_completion_request(_parts(*[video, text] * 9))
    assert err.value.code == "too_many_media"
    with pytest.raises(BadParameter, match="media go in user messages") as err:
        parse_completion_request(
            {"messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": [video]}]}
        )
    assert err.value.param == "messages.1"
    with pytest.raises(BadParameter, match="in each video_url or audio_url"):
        parse_completion_request({**_parts(video, sound), "start": 1})
    with pytest.raises(BadParameter, match='must include "audio"'):
        parse_completion_request({**_parts(video, sound), "input_modalities": ["video"]})


def _endless_job(timeout: float) -> FfmpegJob:
    """A real ffmpeg that writes raw frames to stdout until killed."""
    args = [ffmpeg_exe(), "-nostdin", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "rawvideo", "-"]
    return FfmpegJob(args, "decode frames", lambda out: out, MediaLimits(timeout=timeout), max_stdout=1 << 40)


async def _run_and_collect(coro_factory) -> list[dict]:
    """Runs what coro_factory starts; returns whatever asyncio reported to its exception handler."""
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    await coro_factory()
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.05)
    return reported


@pytest.mark.parametrize("delay", [0.05, 0.3])
def test_a_cancelled_ffmpeg_job_is_killed_and_leaves_nothing_unretrieved(delay):
    """A client that disconnects mid-decode cancels the job: ffmpeg dies, nothing is logged."""

    async def cancel_midway():
        before = set(psutil.Process().children())
        task = asyncio.ensure_future(run_job(_endless_job(60), "clip.mp4"))
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not [
            p
            for p in psutil.Process().children()
            if p not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]

    assert asyncio.run(_run_and_collect(cancel_midway)) == []


def test_an_ffmpeg_job_over_its_time_is_killed_with_a_clear_error():
    async def overrun():
        started = time.monotonic()
        with pytest.raises(MediaError, match="longer than 1 s to decode frames"):
            await run_job(_endless_job(1.0), "clip.mp4")
        assert time.monotonic() - started < 5

    assert asyncio.run(_run_and_collect(overrun)) == []


def test_stored_audio_may_hold_any_number_of_windows_up_to_the_models():
    from service.feature_store import _fits

    audio = (64, 32, 4)  # 64 rows a window, 32 wide, at most 4 windows
    assert all(_fits((64 * w, 32), audio) for w in (1, 2, 4))
    assert not any(_fits(shape, audio) for shape in ((0, 32), (64 * 5, 32), (65, 32), (64, 31), (1, 64, 32)))
    assert _fits((829, 32), (829, 32)) and not _fits((828, 32), (829, 32))
