"""The SDK and its command line against the real service (tiny), plus retry and timeout
behaviour against small local HTTP servers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import clients
from clients import AsyncClient, Client
from tests.servers import ROOT, Server

KEY = "sdk-test-key"
LIMIT = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tiny, tiny_home, tmp_path_factory):
    srv = Server(
        {
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_API_KEYS": KEY,
            "AVCHAT_MAX_UPLOAD_BYTES": str(LIMIT),
            "AVCHAT_DOCS": "on",
            "AVCHAT_ENGINE": "transformers",
            "AVCHAT_TEMP_DIR": str(tmp_path_factory.mktemp("sdk-tmp")),
        },
        tmp_path_factory.mktemp("logs") / "sdk.log",
    )
    yield srv.wait_ready()
    srv.stop()


@pytest.fixture
def client(server):
    with Client(base_url=server.url, api_key=KEY) as c:
        yield c


def test_sync_completion_from_a_path(client, media_dir):
    answer = client.video.chat.create(
        video=str(media_dir / "vllama_dog_barking.mp4"), prompt="What do you hear?", max_tokens=4, temperature=0
    )
    assert isinstance(answer, clients.ChatCompletion)
    assert answer.video_id.startswith("vid-") and answer.usage.completion_tokens == 4
    assert answer.usage.prompt_tokens_details.audio_tokens == 64
    assert answer.usage.prompt_tokens_details.video_tokens == 829


def test_video_as_bytes_file_object_and_video_id(client, media_dir):
    path = media_dir / "vllama_boat.mp4"
    by_bytes = client.video.chat.create(video=path.read_bytes(), prompt="?", max_tokens=2)
    with path.open("rb") as f:
        by_file = client.video.chat.create(video=f, prompt="?", max_tokens=2)
    by_id = client.video.chat.create(video=by_bytes.video_id, prompt="?", max_tokens=2)
    assert by_bytes.video_id == by_file.video_id == by_id.video_id


def test_sync_stream_and_early_exit_closes_the_connection(client, media_dir):
    stream = client.video.chat.create(
        video=str(media_dir / "vllama_boat.mp4"),
        prompt="?",
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 5
    assert stream.response.is_closed
    with client.video.chat.create(
        video=str(media_dir / "vllama_boat.mp4"), prompt="?", max_tokens=500, stream=True, temperature=1.0
    ) as early:
        next(iter(early))
    assert early.response.is_closed
    early2 = client.video.chat.create(
        video=str(media_dir / "vllama_boat.mp4"), prompt="?", max_tokens=500, stream=True, temperature=1.0
    )
    for _ in early2:
        break
    assert early2.response.is_closed


def test_async_client_streaming_and_not(server, media_dir):
    async def run():
        async with AsyncClient(base_url=server.url, api_key=KEY) as c:
            answer = await c.video.chat.create(
                video=str(media_dir / "vllama_dog_barking.mp4"), prompt="?", max_tokens=3, temperature=0
            )
            stream = await c.video.chat.create(
                video=answer.video_id, prompt="?", max_tokens=3, temperature=0, stream=True
            )
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            models = await c.models.list()
            return answer, text, models

    answer, text, models = asyncio.run(run())
    assert text == answer.choices[0].message.content
    assert models.data[0].engine in ("transformers", "vllm")


def test_conversation_uploads_once_and_keeps_history(client, media_dir, server):
    uploads_before = _metric(server, "avchat_decode_seconds_count")
    chat = client.video.chat.conversation(str(media_dir / "vllama_dog_barking.mp4"), max_tokens=3, temperature=0)
    first = chat.ask("What do you hear?")
    second = "".join(c.choices[0].delta.content or "" for c in chat.ask("And see?", stream=True) if c.choices)
    third = chat.ask("Anything else?")
    assert chat.video_id == first.video_id
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 3
    assert chat.messages[3]["content"] == second
    assert third.usage.prompt_tokens > first.usage.prompt_tokens
    assert _metric(server, "avchat_decode_seconds_count") - uploads_before <= 1


def test_chat_completions_with_a_video_url_part(client, media_dir):
    part = clients.video_url_part(media_dir / "vllama_dog_barking.mp4")
    assert part["video_url"]["url"].startswith("data:video/mp4;base64,")
    answer = client.chat.completions.create(
        messages=[{"role": "user", "content": [{"type": "text", "text": "What do you hear?"}, part]}], max_tokens=3
    )
    assert answer.usage.prompt_tokens_details.video_tokens == 829
    stream = client.chat.completions.create(
        messages=[{"role": "user", "content": [{"type": "text", "text": "?"}, part]}], max_tokens=3, stream=True
    )
    assert any(c.choices and c.choices[0].finish_reason for c in stream)
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_each_error_class_from_a_real_cause(server, client, media_dir, tmp_path):
    with (
        Client(base_url=server.url, api_key="wrong", max_retries=0) as bad,
        pytest.raises(clients.AuthenticationError) as err,
    ):
        bad.models.list()
    assert err.value.status_code == 401 and err.value.request_id and err.value.code == "invalid_api_key"
    big = tmp_path / "big.mp4"
    with big.open("wb") as f:
        f.truncate(LIMIT + 1024 * 1024)
    with pytest.raises(clients.PayloadTooLargeError):
        client.video.chat.create(video=str(big), prompt="?")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 10)
    with pytest.raises(clients.UnsupportedMediaTypeError) as err:
        client.video.chat.create(video=str(text), prompt="?")
    assert "not a readable media file" in err.value.message
    with pytest.raises(clients.NotFoundError):
        client.video.chat.create(video_id="vid-unknown", prompt="?")
    with pytest.raises(clients.UnprocessableEntityError):
        client.video.chat.create(video=str(media_dir / "vllama_boat.mp4"), prompt="?", temperature=9)
    with pytest.raises(clients.BadRequestError) as err:
        client.video.chat.create(video=str(media_dir / "vllama_boat.mp4"), prompt="?", max_tokens=2000)
    assert err.value.code == "context_length_exceeded"
    with Client(base_url="http://127.0.0.1:9", max_retries=0) as nowhere, pytest.raises(clients.APIConnectionError):
        nowhere.models.list()


def test_upload_memory_stays_flat(client, tmp_path):
    path = tmp_path / "large.bin"
    with path.open("wb") as f:
        chunk = os.urandom(1024 * 1024)
        for _ in range(48):
            f.write(chunk)
    tracemalloc.start()
    try:
        with pytest.raises(clients.UnsupportedMediaTypeError):
            client.video.chat.create(video=str(path), prompt="?")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while uploading 48 MiB"


def test_client_types_match_the_service_schema(server):
    schema = httpx.get(server.url + "/openapi.json").json()["components"]["schemas"]
    pairs = {
        "ChatCompletion": clients.ChatCompletion,
        "ChatCompletionChunk": clients.ChatCompletionChunk,
        "Usage": clients.Usage,
        "PromptTokensDetails": clients._types.PromptTokensDetails,
        "ChoiceDelta": clients._types.ChoiceDelta,
        "ChunkChoice": clients._types.ChunkChoice,
        "Choice": clients._types.Choice,
        "ChatMessage": clients._types.ChatCompletionMessage,
        "ModelCard": clients.Model,
        "ModelList": clients.ModelList,
        "MediaInfo": clients._types.MediaInfo,
        "MediaPart": clients._types.MediaPart,
    }
    for name, cls in pairs.items():
        server_fields = set(schema[name]["properties"])
        assert server_fields == set(cls.model_fields), (name, server_fields ^ set(cls.model_fields))
        required_here = {n for n, f in cls.model_fields.items() if f.is_required()}
        assert required_here <= set(schema[name].get("required", [])), name
    form = set(schema["VideoChatForm"]["properties"])
    sent = set(
        clients._base.video_form(
            video_id="v",
            uuid="u",
            messages=[],
            prompt=None,
            stream=True,
            input_modalities=["audio"],
            start=1,
            end=2,
            max_tokens=1,
            temperature=1,
            top_p=1,
            seed=1,
            stop=["x"],
            stream_options={"include_usage": True},
        )
    ) | {"video", "prompt"}
    assert sent <= form, sent - form


def _metric(server, name):
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


# -- retries and timeouts against a scripted local server -------------------------------------------

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "video_id": "vid-1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class Scripted:
    """A local HTTP server that answers from a script: a list of (status, body, headers, delay)."""

    def __init__(self, script):
        self.script = list(script)
        self.bodies: list[int] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                owner.bodies.append(length)
                status, body, headers, delay = owner.script.pop(0) if owner.script else (200, COMPLETION, {}, 0)
                time.sleep(delay)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except BrokenPipeError:
                    pass

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_503_twice_then_200_is_retried_and_the_upload_resent(tmp_path):
    busy = {"error": {"message": "busy", "type": "overloaded_error", "param": None, "code": None}}
    srv = Scripted([(503, busy, {"Retry-After": "0"}, 0), (503, busy, {"Retry-After": "0"}, 0)])
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 100_000)
    try:
        with Client(base_url=srv.url, max_retries=2) as c, video.open("rb") as f:
            f.read(10)  # the SDK rewinds to where the caller left it, every attempt
            answer = c.video.chat.create(video=f, prompt="?")
        assert answer.choices[0].message.content == "ok"
        assert len(srv.bodies) == 3 and len(set(srv.bodies)) == 1 and srv.bodies[0] > 99_990
        srv.script = [(503, busy, {"Retry-After": "0"}, 0)] * 3
        with Client(base_url=srv.url, max_retries=1) as c, pytest.raises(clients.ServiceUnavailableError):
            c.video.chat.create(video=str(video), prompt="?")
    finally:
        srv.close()


def test_retry_after_is_honoured_and_4xx_is_not_retried():
    srv = Scripted([(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "1"}, 0)])
    try:
        with Client(base_url=srv.url, max_retries=1) as c:
            start = time.perf_counter()
            resp = c.request("GET", "/v1/models")
            assert time.perf_counter() - start >= 0.95 and resp.status_code == 200
        srv.script = [(400, {"error": {"message": "bad", "type": "invalid_request_error"}}, {}, 0)]
        count = len(srv.bodies)
        with Client(base_url=srv.url, max_retries=3) as c, pytest.raises(clients.BadRequestError):
            c.request("GET", "/v1/models")
        assert len(srv.bodies) == count + 1
    finally:
        srv.close()


def test_a_stalled_server_times_out_after_retries():
    srv = Scripted([(200, COMPLETION, {}, 2.0)] * 3)
    try:
        with Client(base_url=srv.url, timeout=0.3, max_retries=1) as c:
            start = time.perf_counter()
            with pytest.raises(clients.APITimeoutError):
                c.video.chat.create(video=b"abc", prompt="?")
        assert len(srv.bodies) == 2 and time.perf_counter() - start < 3
    finally:
        srv.close()


def test_a_stream_that_breaks_after_tokens_is_not_retried():
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    body = f"data: {json.dumps(chunk)}\n\n".encode()
    error = {"error": {"message": "generation failed: boom", "type": "server_error"}}
    body_err = body + f"data: {json.dumps(error)}\n\n".encode()
    srv = Scripted([(200, body_err, {"content-type": "text/event-stream"}, 0)])
    try:
        with Client(base_url=srv.url, max_retries=3) as c:
            stream = c.video.chat.create(video=b"abc", prompt="?", stream=True)
            it = iter(stream)
            assert next(it).choices[0].delta.content == "hi"
            with pytest.raises(clients.APIError, match="boom"):
                next(it)
        assert len(srv.bodies) == 1
    finally:
        srv.close()


# -- command line -----------------------------------------------------------------------------------


def _cli(*args, env_extra=None, input_text=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "clients", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        input=input_text,
    )


def test_cli_streams_prints_json_and_chats(server, media_dir):
    env = {"AVCHAT_BASE_URL": server.url, "AVCHAT_API_KEY": KEY}
    clip = str(media_dir / "vllama_dog_barking.mp4")
    out = _cli("chat", clip, "What do you hear?", "--max-tokens", "3", env_extra=env)
    assert out.returncode == 0, out.stderr
    as_json = _cli(
        "chat", clip, "What do you hear?", "--max-tokens", "3", "--json", "--temperature", "0", env_extra=env
    )
    body = json.loads(as_json.stdout)
    assert body["object"] == "chat.completion" and body["usage"]["prompt_tokens_details"]["audio_tokens"] == 64
    chat = _cli("chat", clip, "--max-tokens", "2", env_extra=env, input_text="What?\nAnd then?\n\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("assistant> ") == 2
    models = _cli("models", env_extra=env)
    assert models.stdout.startswith("tiny\tengine=")


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("bad key", 4, "HTTP 401"),
        ("text file", 7, "HTTP 415"),
        ("unknown id", 6, "HTTP 404"),
        ("no server", 3, "error: Connection error"),
        ("missing file", 2, "no such file"),
    ],
)
def test_cli_exit_codes(server, tmp_path, case, code, message):
    env = {"AVCHAT_BASE_URL": server.url, "AVCHAT_API_KEY": KEY}
    text = tmp_path / "t.mp4"
    text.write_text("hello")
    args = {
        "bad key": ["--api-key", "nope", "chat", str(text), "?"],
        "text file": ["chat", str(text), "?"],
        "unknown id": ["chat", "vid-missing", "?"],
        "no server": ["--base-url", "http://127.0.0.1:9", "--max-retries", "0", "chat", str(text), "?"],
        "missing file": ["chat", str(tmp_path / "nope.mp4"), "?"],
    }[case]
    out = _cli(*args, env_extra=env)
    assert out.returncode == code, (out.returncode, out.stderr)
    assert message in out.stderr and "Traceback" not in out.stderr
