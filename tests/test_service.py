"""The real service (uvicorn on 127.0.0.1, tiny model) driven over HTTP by real clients."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from httpx_sse import connect_sse

from tests.servers import Server, metric

UPLOAD_LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def temp_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("service-tmp")


def _engines() -> list[str]:
    chosen = os.environ.get("AVCHAT_TEST_ENGINES")
    if chosen:
        return [e.strip() for e in chosen.split(",") if e.strip()]
    return ["transformers"] + (["vllm"] if importlib.util.find_spec("vllm") else [])


@pytest.fixture(scope="module", params=_engines())
def server(request, tiny, tiny_home, temp_dir, tmp_path_factory):
    """One real server per engine; every test in this file runs against each."""
    system_temp = tmp_path_factory.mktemp(f"tmpdir-{request.param}")
    srv = Server(
        {
            "TMPDIR": str(system_temp),
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_TEMP_DIR": str(temp_dir),
            "AVCHAT_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
            "AVCHAT_ENGINE": request.param,
            "AVCHAT_ENCODER_BATCH_WINDOW_MS": "50",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            # The default (cores / 2) is one decode at a time here, which spaces requests out so
            # they never meet at the encoder; the batching test needs them to arrive together.
            "AVCHAT_MAX_PARALLEL_DECODES": "4",
        },
        tmp_path_factory.mktemp("logs") / f"server-{request.param}.log",
    )
    srv.engine = request.param
    yield srv.wait_ready()
    srv.stop()
    # Every test's requests, and the shutdown itself, left no traceback and no temp file behind
    # (torch's compile cache aside).
    assert "Traceback" not in srv.log_text(), srv.log_text()[-3000:]
    assert [p.name for p in system_temp.iterdir() if not p.name.startswith("torchinductor")] == []


def test_the_engine_asked_for_is_the_one_serving(server):
    models = httpx.get(server.url + "/v1/models").json()
    assert models["data"][0]["engine"] == server.engine
    assert f'avchat_engine_info{{engine="{server.engine}"' in httpx.get(server.url + "/metrics").text


def test_greedy_tokens_match_the_in_process_model(server, tiny, media_dir):
    """Both engines, fed the same prompt embeddings, decode the same greedy tokens (float32)."""
    from model.generation import TextStream
    from model.pipeline import embed_media, prompt, prompt_embeds

    path = media_dir / "vllama_dog_barking.mp4"
    _, embeddings = embed_media(tiny, [str(path)])[0]
    p = prompt(tiny.processor, [{"role": "user", "content": "What do you hear?"}], embeddings)
    ids = list(tiny.generate(prompt_embeds(tiny, p, embeddings), max_new_tokens=12))
    stream = TextStream(tiny.tokenizer, eos_token_id=tiny.tokenizer.eos_token_id)
    expected = "".join(stream.push(t) for t in ids) + stream.finish()
    r = chat(server.url, path, prompt="What do you hear?", max_tokens=12, temperature=0)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected
    assert r.json()["usage"]["completion_tokens"] == len(ids)


def test_two_media_decode_as_the_in_process_model_does(server, tiny, media_dir):
    """A video and a sound from another file: each engine is given both media's embeddings in
    their blocks, in order, and decodes the greedy tokens the in-process model does."""
    from model.generation import TextStream
    from model.pipeline import Part, embed_media, prompt, prompt_embeds

    video, sound = media_dir / "vllama_dog_barking.mp4", media_dir / "whisper_jfk.flac"
    embeddings = [e for _, e in embed_media(tiny, [str(video), str(sound)])]
    messages = [{"role": "user", "content": "What do you hear?"}]
    parts = [Part(embeddings[0], 0), Part(embeddings[1], 0, ["audio"])]
    p = prompt(tiny.processor, messages, parts, max_new_tokens=12)
    ids = list(tiny.generate(prompt_embeds(tiny, p, parts), max_new_tokens=12))
    stream = TextStream(tiny.tokenizer, eos_token_id=tiny.tokenizer.eos_token_id)
    expected = "".join(stream.push(t) for t in ids) + stream.finish()
    data = base64.b64encode(video.read_bytes()).decode()
    content = [
        {"type": "text", "text": "What do you hear?"},
        {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}},
        {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(sound.read_bytes()).decode(), "format": "flac"},
        },
    ]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 12, "temperature": 0}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected
    assert r.json()["usage"]["prompt_tokens"] == len(p.ids) and p.counts["audio"] == 2 * 64
    assert [part["frames"] > 0 for part in r.json()["media"]["parts"]] == [True, False]


def chat(url, path, prompt="What happens?", **fields):
    files = {"video": (path.name, path.open("rb"), "application/octet-stream")} if path is not None else None
    data = {"prompt": prompt, "max_tokens": "4", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(url + "/v1/video/chat", files=files, data=data, timeout=120)


def test_every_real_clip_gets_an_answer(server, media_files):
    for path in media_files:
        r = chat(server.url, path)
        assert r.status_code == 200, (path.name, r.text)
        body = r.json()
        assert body["object"] == "chat.completion" and body["video_id"].startswith("vid-")
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        details = body["usage"]["prompt_tokens_details"]
        has_audio = path.name not in ("vllama_birthday.mp4", "decord_video_90.mov")
        has_video = path.suffix != ".flac"
        assert details["audio_tokens"] == (64 if has_audio else 0), path.name
        assert details["video_tokens"] == (829 if has_video else 0), path.name
        usage = body["usage"]
        assert usage["prompt_tokens"] == details["audio_tokens"] + details["video_tokens"] + details["text_tokens"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert r.headers["x-request-id"]


def test_streaming_sends_openai_chunks_then_done(server, media_dir):
    path = media_dir / "vllama_boat.mp4"
    with (
        httpx.Client(timeout=120) as client,
        path.open("rb") as f,
        connect_sse(
            client,
            "POST",
            server.url + "/v1/video/chat",
            files={"video": ("boat.mp4", f)},
            data={
                "prompt": "What?",
                "max_tokens": "6",
                "stream": "true",
                "stream_options": json.dumps({"include_usage": True}),
            },
        ) as events,
    ):
        assert events.response.headers["content-type"].startswith("text/event-stream")
        data = [e.data for e in events.iter_sse()]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert usage["usage"]["prompt_tokens_details"]["video_tokens"] == 829
    assert len({c["id"] for c in chunks}) == 1


def test_openai_sdk_with_a_video_url_data_url(server, media_dir):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    video = base64.b64encode((media_dir / "vllama_dog_barking.mp4").read_bytes()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What do you hear?"},
                {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{video}"}},
            ],
        }
    ]
    completion = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
    assert completion.choices[0].message.role == "assistant"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens > 893
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content  # greedy: same answer streamed or not
    assert chunks[-1].usage.completion_tokens == 5
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    # Multi-turn history with the video in the first turn.
    follow = client.chat.completions.create(
        model="tiny",
        max_tokens=3,
        messages=[
            *messages,
            {"role": "assistant", "content": completion.choices[0].message.content},
            {"role": "user", "content": "And then?"},
        ],
    )
    assert follow.usage.prompt_tokens > completion.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny",
            max_tokens=3,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "?"},
                        {"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}},
                    ],
                }
            ],
        )
    assert err.value.body["code"] == "host_not_allowed"


def test_concurrent_requests_share_encoder_batches(server, media_dir, clips):
    paths = [clips[k] for k in ("cfr", "vfr", "dense_keys", "halves")] + [
        media_dir / n
        for n in (
            "vllama_boat.mp4",
            "moviepy_chaplin.mp4",
            "vllava_sample_demo_1.mp4",
            "moviepy_big_buck_bunny_432_433.webm",
        )
    ]
    # Fresh content for every request, so nothing comes from the feature cache.
    batches_before = metric(server.url, "avchat_encoder_batch_size_count")
    nonce = str(time.time()).encode()

    def one(path):
        payload = path.read_bytes() + nonce  # trailing bytes: same media, new hash
        return httpx.post(
            server.url + "/v1/video/chat",
            files={"video": (path.name, payload)},
            data={"prompt": "What?", "max_tokens": "3"},
            timeout=180,
        )

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, paths))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    batches = metric(server.url, "avchat_encoder_batch_size_count") - batches_before
    assert 1 <= batches < 8


def test_follow_up_with_video_id_hits_the_cache(server, media_dir):
    first = chat(server.url, media_dir / "vllama_dog_barking.mp4", prompt="What do you hear?")
    video_id = first.json()["video_id"]
    hits = metric(server.url, "avchat_feature_cache_total", 'result="hit"')
    decodes = metric(server.url, "avchat_decode_seconds_count")
    again = chat(server.url, None, prompt="And what do you see?", video_id=video_id)
    assert again.status_code == 200, again.text
    assert again.json()["video_id"] == video_id
    assert again.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 64
    assert metric(server.url, "avchat_feature_cache_total", 'result="hit"') == hits + 1
    assert metric(server.url, "avchat_decode_seconds_count") == decodes
    # Multi-turn messages with the same video, video only this time.
    messages = [
        {"role": "user", "content": "What do you hear?"},
        {"role": "assistant", "content": "a dog"},
        {"role": "user", "content": "Is it loud?"},
    ]
    third = chat(server.url, None, prompt="", video_id=video_id, messages=json.dumps(messages), modalities="video")
    assert third.status_code == 200, third.text
    assert third.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 0


def _ffmpeg_children(pid: int) -> list:
    return [p for p in psutil.Process(pid).children(recursive=True) if "ffmpeg" in p.name()]


def test_client_leaving_mid_stream_stops_generation(server, media_dir):
    aborted = metric(server.url, "avchat_generations_aborted_total")
    with (
        httpx.Client(timeout=120) as client,
        (media_dir / "vllama_boat.mp4").open("rb") as f,
        client.stream(
            "POST",
            server.url + "/v1/video/chat",
            files={"video": ("boat.mp4", f)},
            data={"prompt": "Tell me everything.", "max_tokens": "1000", "stream": "true", "temperature": "1.0"},
        ) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(3)]
        assert got[0].startswith("data: ")
    deadline = time.time() + 10
    while time.time() < deadline and metric(server.url, "avchat_generations_aborted_total") == aborted:
        time.sleep(0.1)
    assert metric(server.url, "avchat_generations_aborted_total") == aborted + 1
    while time.time() < deadline and metric(server.url, "avchat_active_generations") != 0:
        time.sleep(0.1)
    assert metric(server.url, "avchat_active_generations") == 0
    assert _ffmpeg_children(server.proc.pid) == []


def test_client_leaving_during_decode_kills_ffmpeg(server, clips):
    payload = clips["dense_keys"].read_bytes() + b"leave-early"
    stop = threading.Event()

    def upload():
        try:
            httpx.post(
                server.url + "/v1/video/chat", files={"video": ("v.mp4", payload)}, data={"prompt": "?"}, timeout=0.25
            )
        except httpx.HTTPError:
            pass
        stop.set()

    threading.Thread(target=upload).start()
    stop.wait(10)
    deadline = time.time() + 5
    while time.time() < deadline and _ffmpeg_children(server.proc.pid):
        time.sleep(0.05)
    assert _ffmpeg_children(server.proc.pid) == []
    assert httpx.get(server.url + "/ready").status_code == 200  # and the service carries on


def _oversize(tmp_path):
    path = tmp_path / "big.mp4"
    path.write_bytes(b"\0" * (UPLOAD_LIMIT + 1024 * 1024))
    return path


BAD_INPUTS = [
    # (name, how, status, error type, code or message fragment)
    ("text file", {"file": "text"}, 415, "unsupported_media_type", "not a readable media file"),
    ("empty file", {"file": "empty"}, 400, "invalid_request_error", "empty"),
    ("truncated mp4", {"file": "truncated"}, 415, "unsupported_media_type", "truncated"),
    ("oversize upload", {"file": "oversize"}, 413, "payload_too_large", "limit"),
    ("unknown video_id", {"data": {"video_id": "vid-nope"}}, 404, "not_found_error", "unknown or expired"),
    ("no question", {"data": {"prompt": ""}}, 400, "invalid_request_error", "ask something"),
    (
        "both video and video_id",
        {"data": {"video_id": "vid-x"}, "file": "clip"},
        400,
        "invalid_request_error",
        "not both",
    ),
    ("temperature out of range", {"data": {"temperature": "7"}}, 422, "invalid_request_error", "temperature"),
    ("max_tokens not a number", {"data": {"max_tokens": "many"}}, 422, "invalid_request_error", "max_tokens"),
    ("unknown field", {"data": {"colour": "red"}}, 422, "invalid_request_error", "colour"),
    ("bad modalities", {"data": {"modalities": "smell"}}, 400, "invalid_request_error", "modalities"),
    ("messages not JSON", {"data": {"messages": "[oops", "prompt": ""}}, 422, "invalid_request_error", "JSON"),
    (
        "over the context",
        {"file": "clip", "data": {"max_tokens": "2000"}},
        400,
        "invalid_request_error",
        "over the model's context",
    ),
    (
        "video-only on an audio file",
        {"file": "audio", "data": {"modalities": "video"}},
        415,
        "unsupported_media_type",
        "no video stream",
    ),
    ("not multipart", {"json": {"prompt": "hi"}}, 400, "invalid_request_error", "multipart"),
]


@pytest.mark.parametrize("name, how, status, etype, fragment", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_get_the_right_status_and_an_openai_error(
    server, media_dir, tmp_path, name, how, status, etype, fragment
):
    files = None
    kind = how.get("file")
    if kind:
        content = {
            "text": lambda: b"just some text\n" * 50,
            "empty": lambda: b"",
            "truncated": lambda: (media_dir / "vllama_boat.mp4").read_bytes()[:300_000],
            "oversize": lambda: _oversize(tmp_path).read_bytes(),
            "clip": lambda: (media_dir / "vllama_boat.mp4").read_bytes(),
            "audio": lambda: (media_dir / "whisper_jfk.flac").read_bytes(),
        }[kind]()
        files = {"video": ("upload.mp4", content)}
    data = {"prompt": "What?", "max_tokens": "4", **how.get("data", {})}
    if "json" in how:
        r = httpx.post(server.url + "/v1/video/chat", json=how["json"], timeout=60)
    else:
        r = httpx.post(server.url + "/v1/video/chat", files=files, data=data, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == etype and set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"] or fragment == error["code"], error


def test_unknown_route_and_openai_validation_errors(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": []})
    assert r.status_code == 422 and "messages" in r.json()["error"]["message"]


def test_metrics_expose_the_operational_numbers(server, media_dir):
    assert chat(server.url, media_dir / "vllama_boat.mp4").status_code == 200  # this test's own request
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "avchat_requests_total",
        "avchat_time_to_first_token_seconds",
        "avchat_request_seconds",
        "avchat_generated_tokens_total",
        "avchat_decode_seconds",
        "avchat_encode_seconds",
        "avchat_encoder_batch_size",
        "avchat_queue_depth",
        "avchat_feature_cache_total",
        "avchat_engine_info",
    ):
        assert name in text, name
    assert re.search(r'avchat_requests_total\{route="/v1/video/chat",status="200"\} [1-9]', text)


def test_temporary_files_are_all_removed(server, temp_dir, media_dir, tmp_path):
    """Uploads that succeed, fail to decode, go over the limit or are abandoned all leave nothing."""
    chat(server.url, media_dir / "vllama_boat.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n" * 100)
    chat(server.url, bad)
    httpx.post(
        server.url + "/v1/video/chat",
        files={"video": ("big.mp4", _oversize(tmp_path).read_bytes())},
        data={"prompt": "?"},
        timeout=60,
    )
    clip = (media_dir / "vllama_boat.mp4").read_bytes() + b"left early"
    try:
        httpx.post(server.url + "/v1/video/chat", files={"video": ("v.mp4", clip)}, data={"prompt": "?"}, timeout=0.05)
    except httpx.HTTPError:
        pass
    deadline = time.time() + 10
    while time.time() < deadline and list(temp_dir.iterdir()):
        time.sleep(0.1)
    assert list(temp_dir.iterdir()) == []


@pytest.fixture(scope="module")
def strict_server(tiny, tiny_home, tmp_path_factory):
    srv = Server(
        {
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_API_KEYS": "key-one,key-two",
            "AVCHAT_MAX_CONCURRENCY": "1",
            "AVCHAT_MAX_QUEUE": "0",
            "AVCHAT_REQUEST_TIMEOUT_S": "0.3",
            "AVCHAT_TEMP_DIR": str(tmp_path_factory.mktemp("strict-tmp")),
            "AVCHAT_ENGINE": "transformers",
        },
        tmp_path_factory.mktemp("logs") / "strict.log",
    )
    yield srv.wait_ready()
    srv.stop()


def test_ready_answers_503_while_no_model_is_loaded(tiny_home, tmp_path):
    """A model that cannot load: /health stays up, /ready and the API say 503 and why."""
    srv = Server(
        {"AVCHAT_HOME": str(tiny_home), "AVCHAT_MODEL": str(tmp_path / "no-such-checkpoint")}, tmp_path / "broken.log"
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(srv.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.get(srv.url + "/ready")
        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["type"] == "service_unavailable"
        while time.time() < deadline:  # "still loading" until the load has failed
            r = httpx.get(srv.url + "/v1/models")
            assert r.status_code == 503
            if "still loading" not in r.json()["error"]["message"]:
                break
            time.sleep(0.2)
        assert "failed to load" in r.json()["error"]["message"]
        assert "Traceback" not in srv.log_text()
    finally:
        srv.stop()


def test_ready_says_which_model_and_engine_once_loaded(strict_server):
    r = httpx.get(strict_server.url + "/ready")  # open without a key, like /health
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "model": "tiny", "engine": "transformers", "feature_store": "off"}
    assert metric(strict_server.url, "avchat_ready", headers={"Authorization": "Bearer key-one"}) == 1
    assert set(strict_server.ready_statuses) <= {200, 503}  # never anything else while it loaded


def test_api_keys_are_enforced(strict_server):
    url = strict_server.url + "/v1/models"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-one"}):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for key in ("key-one", "key-two"):
        assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(strict_server.url + "/health").status_code == 200  # operations stay open


def test_overlong_request_gets_504_and_a_full_queue_503(strict_server, media_dir):
    headers = {"Authorization": "Bearer key-one"}
    payload = (media_dir / "vllava_sample_demo_1.mp4").read_bytes()

    def one(i):
        return httpx.post(
            strict_server.url + "/v1/video/chat",
            headers=headers,
            files={"video": ("v.mp4", payload + str(i).encode())},
            data={"prompt": "?", "max_tokens": "3"},
            timeout=60,
        )

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(one, range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert 504 in statuses and 503 in statuses, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] and busy.json()["error"]["type"] == "overloaded_error"
    late = next(r for r in responses if r.status_code == 504)
    assert late.json()["error"]["type"] == "timeout_error"
