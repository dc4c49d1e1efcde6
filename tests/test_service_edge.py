"""The service edge under hostile and clumsy clients (real uvicorn on 127.0.0.1, tiny model):
slow senders, huge bodies, malformed requests, other keys' videos, URLs that point inward, and
files that point elsewhere. Every refusal is a 4xx with an OpenAI error body and no traceback."""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psutil
import pytest

from tests import servers
from tests.conftest import H264, ffmpeg, lavfi, make_secret_ts
from tests.servers import Server, free_port, wait_for
from tests.test_media import hostile_files

KEY_A, KEY_B = "key-a", "key-b"
LIMIT = 4 * 1024 * 1024


class _Files(BaseHTTPRequestHandler):
    """Serves one clip at /clip.mp4 and 404 elsewhere; records every request."""

    clip = b""
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        _Files.hits.append(self.path)
        if self.path == "/clip.mp4":
            self.send_response(200)
            self.send_header("content-length", str(len(self.clip)))
            self.end_headers()
            self.wfile.write(self.clip)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def files(media_dir):
    _Files.clip = (media_dir / "vllama_dog_barking.mp4").read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def guarded(tiny, tiny_home, files, tmp_path_factory):
    temp = tmp_path_factory.mktemp("guarded-tmp")
    (temp / "avchat-upload-999999999-left.bin").write_bytes(b"left by a killed process")
    (temp / f"avchat-upload-{os.getpid()}-live.bin").write_bytes(b"a live process's upload")
    srv = Server(
        {
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_API_KEYS": f"{KEY_A},{KEY_B}",
            "AVCHAT_ENGINE": "transformers",
            "AVCHAT_MAX_CONCURRENCY": "1",
            "AVCHAT_MAX_QUEUE": "1",
            "AVCHAT_UPLOAD_RATE_WINDOW_S": "2",
            "AVCHAT_UPLOAD_MIN_BYTES": "4096",
            "AVCHAT_HEADER_TIMEOUT_S": "1",
            "AVCHAT_MAX_UPLOAD_BYTES": str(LIMIT),
            "AVCHAT_TEMP_DIR": str(temp),
            "AVCHAT_METRICS_REQUIRE_KEY": "true",
            "AVCHAT_ALLOWED_VIDEO_HOSTS": f"http://127.0.0.1:{files},http://localhost:{files}",
        },
        tmp_path_factory.mktemp("logs") / "guarded.log",
    )
    srv.temp = temp
    yield srv.wait_ready()
    srv.stop()


A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


def ask(url, path=None, headers=A, prompt="What?", **fields):
    files = {"video": (path.name, path.read_bytes())} if path is not None else None
    data = {"prompt": prompt, "max_tokens": "3", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(url + "/v1/video/chat", files=files, data=data, headers=headers, timeout=120)


def is_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    return error


def metric(url: str, name: str, labels: str = "", headers=A) -> float:
    return servers.metric(url, name, labels, headers)


# -- start-up -----------------------------------------------------------------------------------------


def test_start_up_removes_uploads_a_killed_process_left_and_only_those(guarded):
    names = {p.name for p in guarded.temp.iterdir()}
    assert "avchat-upload-999999999-left.bin" not in names
    assert f"avchat-upload-{os.getpid()}-live.bin" in names


# -- availability ---------------------------------------------------------------------------------------


def _slow_uploader(port: int, stop: threading.Event, result: dict) -> None:
    """Headers (a 3 MB body, under the cap), a few hundred bytes of it, then one byte every 0.5 s."""
    boundary = "slowslowslow"
    head = (
        f"POST /v1/video/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 3000000\r\n\r\n"
    )
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nWhat?\r\n--{boundary}\r\n'
        f'Content-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'
    ).encode() + b"\0" * 200
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode() + body)
        while not stop.is_set():
            # Read before writing: a byte sent after the server answered and closed draws a reset,
            # which can drop the answer from this side's buffer.
            readable, _, _ = select.select([s], [], [], 0.5)
            if not readable:
                try:
                    s.sendall(b"\0")
                except OSError:
                    result["answer"] = "closed"
                    return
                continue
            data = b""
            try:
                while more := s.recv(65536):  # the whole answer, until the server closes
                    data += more
            except OSError:
                pass
            result["answer"] = data.decode("latin-1") if data else "closed"
            return


def test_slow_uploads_never_hold_generation_places_and_end_with_408(guarded, media_dir):
    stop = threading.Event()
    results = [dict() for _ in range(10)]
    threads = [threading.Thread(target=_slow_uploader, args=(guarded.port, stop, r)) for r in results]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 1.5  # inside the first 2 s rate window, on a busy machine too
        while (in_progress := metric(guarded.url, "avchat_uploads_in_progress")) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert in_progress >= 10
        started = time.perf_counter()
        r = ask(guarded.url, media_dir / "vllama_boat.mp4")  # concurrency 1 + queue 1, yet answered
        assert r.status_code == 200, r.text
        assert time.perf_counter() - started < 30
        for t in threads:
            t.join(15)
    finally:
        stop.set()
    for result in results:
        assert result.get("answer", "").startswith("HTTP/1.1 408"), result
        assert '"upload_too_slow"' in result["answer"]


def test_a_connection_that_never_finishes_its_headers_is_closed(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as s:
        s.sendall(b"POST /v1/video/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.perf_counter()
        s.settimeout(5)
        for _ in range(20):
            try:
                s.sendall(b"X")  # a header byte now and then: still not finished
            except OSError:
                break
            try:
                if s.recv(1024) == b"":
                    break
            except TimeoutError:
                pass
            time.sleep(0.2)
        assert time.perf_counter() - started < 4


def test_an_unauthenticated_huge_body_is_refused_at_once_with_flat_memory(guarded):
    server = psutil.Process(guarded.proc.pid)
    before = server.memory_info().rss
    chunk = b"{" * (1 << 20)

    def body():
        for _ in range(200):
            yield chunk

    started = time.perf_counter()
    r = httpx.post(
        guarded.url + "/v1/chat/completions", content=body(), headers={"content-type": "application/json"}, timeout=60
    )
    elapsed = time.perf_counter() - started
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    is_error(r, 401, "invalid_api_key")
    assert elapsed < 5, elapsed
    assert server.memory_info().rss - before < 64 * 1024 * 1024


def test_a_json_body_over_its_cap_is_413_with_or_without_content_length(guarded):
    cap = LIMIT * 4 // 3 + 1024 * 1024
    big = b'{"messages": "' + b"a" * (cap + 10) + b'"}'
    r = httpx.post(
        guarded.url + "/v1/chat/completions", content=big, headers={**A, "content-type": "application/json"}, timeout=60
    )
    is_error(r, 413, "upload_too_large")
    r = httpx.post(
        guarded.url + "/v1/chat/completions",
        content=(big[i : i + 65536] for i in range(0, len(big), 65536)),
        headers={**A, "content-type": "application/json"},
        timeout=60,
    )
    is_error(r, 413, "upload_too_large")


def test_auth_comes_before_validation_and_keys_are_checked(guarded):
    r = httpx.post(guarded.url + "/v1/chat/completions", content=b"not json", timeout=10)
    is_error(r, 401)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY_A}):
        r = httpx.get(guarded.url + "/v1/models", headers=headers)
        is_error(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == 'Bearer realm="avchat"'
    assert httpx.get(guarded.url + "/v1/models", headers=B).status_code == 200
    assert httpx.get(guarded.url + "/health").status_code == 200


def test_docs_are_closed_with_keys_and_metrics_are_behind_the_key(guarded):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(guarded.url + path, headers=A).status_code == 404
    assert httpx.get(guarded.url + "/metrics").status_code == 401
    assert "avchat_requests_total" in httpx.get(guarded.url + "/metrics", headers=A).text


def test_form_fields_are_capped_in_number_and_size(guarded):
    many = {f"f{i}": "x" for i in range(40)}
    is_error(
        httpx.post(guarded.url + "/v1/video/chat", files={"x": ("a", b"1")}, data=many, headers=A),
        400,
        "too_many_fields",
    )
    huge = {"prompt": "x" * (300 * 1024)}
    error = is_error(httpx.post(guarded.url + "/v1/video/chat", files={"x": ("a", b"1")}, data=huge, headers=A), 400)
    assert error["param"] == "prompt"


# -- client mistakes are 4xx ------------------------------------------------------------------------


def _multipart(raw: bytes, boundary: str = "b0undary") -> tuple[bytes, dict]:
    return raw, {**A, "content-type": f"multipart/form-data; boundary={boundary}"}


def _bad_requests(clip: bytes) -> list[tuple[str, dict, int]]:
    """(name, httpx.post keyword arguments, status) for the table below."""
    b64 = base64.b64encode(clip).decode()
    part = {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{b64}"}}
    cases = [
        ("multipart garbage", dict(content=b"garbage" * 100, headers=_multipart(b"")[1]), 400),
        (
            "multipart empty boundary",
            dict(content=b"--\r\n", headers={**A, "content-type": "multipart/form-data; boundary="}),
            400,
        ),
        (
            "multipart part header over 8 kB",
            dict(
                content=b"--b0undary\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\nx\r\n--b0undary--\r\n",
                headers=_multipart(b"")[1],
            ),
            400,
        ),
        (
            "multipart without its end",
            dict(
                content=b'--b0undary\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi',
                headers=_multipart(b"")[1],
            ),
            400,
        ),
        (
            "json nested 100000 deep",
            dict(content=b"[" * 100_000 + b"]" * 100_000, headers={**A, "content-type": "application/json"}),
            400,
        ),
        ("json not an object", dict(json=[1, 2], headers=A), 422),
        ("json messages not a list", dict(json={"messages": "hi"}, headers=A), 422),
        (
            "json seed 2**64",
            dict(json={"messages": [{"role": "user", "content": "hi"}], "seed": 2**64}, headers=A),
            422,
        ),
        (
            "json temperature a string",
            dict(json={"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, headers=A),
            422,
        ),
        (
            "json five stop strings",
            dict(json={"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, headers=A),
            400,
        ),
        (
            "json a 1 MB stop string",
            dict(json={"messages": [{"role": "user", "content": "hi"}], "stop": "x" * (1 << 20)}, headers=A),
            400,
        ),
        (
            "json stop of numbers",
            dict(json={"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, headers=A),
            422,
        ),
        (
            "json openai output modalities",
            dict(json={"messages": [{"role": "user", "content": "hi"}], "modalities": ["audio"]}, headers=A),
            422,
        ),
        (
            "json input_modalities smell",
            dict(json={"messages": [{"role": "user", "content": "hi"}], "input_modalities": ["smell"]}, headers=A),
            400,
        ),
        (
            "json nine videos",
            dict(json={"messages": [{"role": "user", "content": [{"type": "video_url", "uuid": "v"}] * 9}]}, headers=A),
            400,
        ),
        ("json three videos", dict(json={"messages": [{"role": "user", "content": [part] * 3}]}, headers=A), 400),
        (
            "json a video in an assistant message",
            dict(
                json={"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [part]}]},
                headers=A,
            ),
            400,
        ),
        ("json empty messages", dict(json={"messages": []}, headers=A), 422),
        ("json unknown role", dict(json={"messages": [{"role": "robot", "content": "hi"}]}, headers=A), 422),
        ("json assistant first", dict(json={"messages": [{"role": "assistant", "content": "hi"}]}, headers=A), 400),
        (
            "json start past the end",
            dict(
                json={
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "?"},
                                {**part, "video_url": {**part["video_url"], "start": 99}},
                            ],
                        }
                    ]
                },
                headers=A,
            ),
            400,
        ),
        (
            "json unknown uuid",
            dict(
                json={
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "text", "text": "?"}, {"type": "video_url", "uuid": "never-named"}],
                        }
                    ]
                },
                headers=A,
            ),
            404,
        ),
        (
            "json a video_url part without url or uuid",
            dict(json={"messages": [{"role": "user", "content": [{"type": "video_url"}]}]}, headers=A),
            400,
        ),
        (
            "json max_tokens 0",
            dict(json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, headers=A),
            422,
        ),
        (
            "json max_tokens huge",
            dict(json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12}, headers=A),
            400,
        ),
        (
            "json a file url",
            dict(
                json={
                    "messages": [
                        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "file:///etc/passwd"}}]}
                    ]
                },
                headers=A,
            ),
            400,
        ),
        (
            "json a data url without base64",
            dict(
                json={
                    "messages": [
                        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4,abc"}}]}
                    ]
                },
                headers=A,
            ),
            400,
        ),
    ]
    form = {"prompt": "What?"}
    for name, fields, status in [
        ("form stop not JSON", {"stop": "[oops"}, 422),
        ("form stop of numbers", {"stop": "[1, 2]"}, 400),
        ("form modalities not JSON", {"modalities": "[oops"}, 422),
        ("form modalities smell", {"modalities": "smell"}, 400),
        ("form modalities an object", {"input_modalities": '{"a": 1}'}, 400),
        ("form seed 2**64", {"seed": str(2**64)}, 422),
        ("form seed text", {"seed": "x"}, 422),
        ("form max_tokens text", {"max_tokens": "many"}, 422),
        ("form max_tokens empty list", {"max_tokens": "[]"}, 422),
        ("form temperature nan", {"temperature": "nan"}, 422),
        ("form temperature 7", {"temperature": "7"}, 422),
        ("form top_p 0", {"top_p": "0"}, 422),
        ("form stream maybe", {"stream": "maybe"}, 422),
        ("form stream_options a list", {"stream_options": "[1]"}, 422),
        ("form stream_options not JSON", {"stream_options": "{"}, 422),
        ("form messages an object", {"messages": '{"role": "user"}', "prompt": ""}, 422),
        ("form messages of strings", {"messages": '["hi"]', "prompt": ""}, 422),
        ("form messages nested deep", {"messages": "[" * 5000 + "]" * 5000, "prompt": ""}, 422),
        (
            "form placeholders in a system message",
            {
                "messages": json.dumps(
                    [{"role": "system", "content": "<video>\n<audio> be brief"}, {"role": "user", "content": "?"}]
                ),
                "prompt": "",
            },
            200,
        ),
        (
            "form placeholders in an assistant message",
            {
                "messages": json.dumps(
                    [
                        {"role": "user", "content": "?"},
                        {"role": "assistant", "content": "<audio><video>"},
                        {"role": "user", "content": "and?"},
                    ]
                ),
                "prompt": "",
            },
            200,
        ),
        ("form temperature 1e-300", {"temperature": "1e-300"}, 200),
        ("form top_p 1e-300", {"top_p": "1e-300"}, 200),
        ("form start negative", {"start": "-1"}, 422),
        ("form end before start", {"start": "3", "end": "1"}, 400),
        ("form unknown field", {"colour": "red"}, 422),
        ("form empty prompt", {"prompt": ""}, 400),
        ("form start with a video_id", {"video_id": "vid-x", "start": "1"}, 400),
    ]:
        cases.append((name, dict(files={"video": ("v.mp4", clip)}, data={**form, **fields}, headers=A), status))
    return cases


BAD = _bad_requests(b"")


@pytest.mark.parametrize("index", range(len(BAD)), ids=[c[0] for c in BAD])
def test_client_mistakes_are_4xx_with_an_openai_error_and_no_traceback(guarded, media_dir, index):
    name, kwargs, status = _bad_requests((media_dir / "vllama_boat.mp4").read_bytes())[index]
    route = "/v1/video/chat" if name.startswith(("form", "multipart")) else "/v1/chat/completions"
    before = guarded.log_text().count("Traceback")
    r = httpx.post(guarded.url + route, timeout=120, **kwargs)
    if status == 200:
        assert r.status_code == 200, r.text
    else:
        is_error(r, status)
    assert wait_for(lambda: f'"status": {r.status_code}' in guarded.log_text())  # its log line is written
    assert guarded.log_text().count("Traceback") == before and '"unhandled error"' not in guarded.log_text()


def test_a_client_that_leaves_mid_upload_is_a_499_not_an_error(guarded):
    before = metric(guarded.url, "avchat_requests_total", 'status="499"')
    with socket.create_connection(("127.0.0.1", guarded.port)) as s:
        s.sendall(
            f"POST /v1/video/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\nContent-Type: "
            "multipart/form-data; boundary=zz\r\nContent-Length: 1000000\r\n\r\n--zz\r\nContent-Disposition: "
            'form-data; name="video"; filename="v.mp4"\r\n\r\n'.encode()
            + b"x" * 10000
        )
        assert wait_for(lambda: metric(guarded.url, "avchat_uploads_in_progress") == 1)  # it is being received
    assert wait_for(lambda: metric(guarded.url, "avchat_requests_total", 'status="499"') == before + 1)
    assert '"unhandled error"' not in guarded.log_text() and '"status": 499' in guarded.log_text()
    assert not [p for p in guarded.temp.iterdir() if "live" not in p.name]  # its temp file is gone


# -- privacy ---------------------------------------------------------------------------------------------


def test_a_video_belongs_to_the_key_that_uploaded_it(guarded, media_dir):
    import hashlib

    path = media_dir / "vllama_dog_barking.mp4"
    first = ask(guarded.url, path, headers=A)
    video_id = first.json()["video_id"]
    assert hashlib.sha256(path.read_bytes()).hexdigest()[:40] not in video_id  # not computable from the content
    assert ask(guarded.url, None, headers=A, video_id=video_id).status_code == 200
    theirs = ask(guarded.url, None, headers=B, video_id=video_id)
    unknown = ask(guarded.url, None, headers=B, video_id="vid-" + "0" * 40)
    assert is_error(theirs, 404, "video_not_found")["message"].replace(video_id, "X") == is_error(
        unknown, 404, "video_not_found"
    )["message"].replace("vid-" + "0" * 40, "X")
    same_content = ask(guarded.url, path, headers=B)
    assert same_content.json()["video_id"] != video_id


# -- fetching ------------------------------------------------------------------------------------------------


def _chat_url(server, url: str, headers=A):
    return httpx.post(
        server.url + "/v1/chat/completions",
        headers=headers,
        timeout=120,
        json={
            "max_tokens": 2,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "?"}, {"type": "video_url", "video_url": {"url": url}}],
                }
            ],
        },
    )


def test_urls_match_scheme_host_and_port_and_never_reach_inward(guarded, files):
    _Files.hits = []
    ok = _chat_url(guarded, f"http://127.0.0.1:{files}/clip.mp4")  # allowed by IP: fetched
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens_details"]["video_tokens"] == 829
    assert _Files.hits == ["/clip.mp4"]
    is_error(_chat_url(guarded, f"http://127.0.0.1:{files + 1}/clip.mp4"), 400, "host_not_allowed")  # another port
    is_error(_chat_url(guarded, f"https://127.0.0.1:{files}/clip.mp4"), 400, "host_not_allowed")  # another scheme
    failures = [
        _chat_url(guarded, f"http://localhost:{files}/clip.mp4"),  # a name that resolves to loopback
        _chat_url(guarded, f"http://127.0.0.1:{files}/missing.mp4"),
    ]  # an HTTP 404
    messages = {is_error(r, 400, "fetch_failed")["message"] for r in failures}
    assert len(messages) == 1 and "404" not in messages.pop()
    assert _Files.hits == ["/clip.mp4", "/missing.mp4"]  # localhost was never contacted


# -- files that point elsewhere, through both routes ---------------------------------------------------------


def test_playlists_and_manifests_are_415_on_both_routes_and_nothing_is_opened(guarded, tmp_path):
    hits: list[str] = []

    class Listener(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    listener = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    target = tmp_path / "secret.ts"
    make_secret_ts(target)
    try:
        for name, data in hostile_files(tmp_path, target, f"http://127.0.0.1:{listener.server_address[1]}").items():
            r = httpx.post(
                guarded.url + "/v1/video/chat",
                files={"video": ("clip.mp4", data)},
                data={"prompt": "?"},
                headers=A,
                timeout=60,
            )
            assert "points at other files" in is_error(r, 415, "not_a_video")["message"], name
            url = "data:video/mp4;base64," + base64.b64encode(data).decode()
            r = _chat_url(guarded, url)
            assert "points at other files" in is_error(r, 415, "not_a_video")["message"], name
    finally:
        listener.shutdown()
    assert hits == []


def test_a_decode_bomb_is_refused_quickly_through_the_service(guarded, tmp_path):
    bomb = tmp_path / "bomb.mp4"
    ffmpeg(
        *lavfi("color=c=black:size=8192x8192:rate=25"),
        "-frames:v",
        "5",
        *H264,
        str(bomb),
    )
    started = time.perf_counter()
    r = ask(guarded.url, bomb)
    assert "AVCHAT_MAX_PIXELS" in is_error(r, 400, "media_over_limit")["message"]
    assert time.perf_counter() - started < 3


def test_files_with_awkward_timing_are_answered_on_both_routes(guarded, odd_clips):
    for name, (path, has_video, has_audio) in odd_clips.items():
        r = ask(guarded.url, path)
        assert r.status_code == 200, (name, r.text)
        details = r.json()["usage"]["prompt_tokens_details"]
        assert (details["video_tokens"], details["audio_tokens"]) == (
            829 if has_video else 0,
            64 if has_audio else 0,
        ), name
        r = _chat_url(guarded, "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode())
        assert r.status_code == 200, (name, r.text)


# -- time limits -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hurried(tiny, tiny_home, tmp_path_factory):
    srv = Server(
        {
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_ENGINE": "transformers",
            "AVCHAT_REQUEST_TIMEOUT_S": "1.5",
            "AVCHAT_MAX_CONCURRENCY": "1",
            "AVCHAT_MAX_QUEUE": "0",
            "AVCHAT_DRAIN_TIMEOUT_S": "1",
            "AVCHAT_TEMP_DIR": str(tmp_path_factory.mktemp("hurried-tmp")),
        },
        tmp_path_factory.mktemp("logs") / "hurried.log",
    )
    yield srv.wait_ready()
    srv.stop()


# 1900 tokens whatever the model says: about 3 s here, two times the 1.5 s timeout on a machine
# twice as fast, and only more on a busy one. Text only: the context has no room for media too.
LONG = {"max_tokens": "1900", "ignore_eos": "true", "temperature": "1", "seed": "3", "prompt": "Tell me everything."}


def _running(url: str) -> float:
    return metric(url, "avchat_engine_generations_running", headers={})


def test_a_request_past_its_timeout_is_504_and_its_generation_stops(hurried):
    r = httpx.post(hurried.url + "/v1/video/chat", data=LONG, timeout=60)
    is_error(r, 504)
    assert wait_for(lambda: _running(hurried.url) == 0, 2)
    # A stream past its deadline ends with an in-band 504 error, and stops too.
    with httpx.stream("POST", hurried.url + "/v1/video/chat", data={**LONG, "stream": "true"}, timeout=60) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    error = json.loads(events[-2][6:])
    assert events[-1] == "data: [DONE]" and error["error"]["type"] == "timeout_error"
    assert wait_for(lambda: _running(hurried.url) == 0, 2)


def test_retry_after_reflects_the_work_queued(hurried):
    for _ in range(2):  # measured seconds per token, for the estimate
        httpx.post(hurried.url + "/v1/video/chat", data={**LONG, "max_tokens": "300"}, timeout=60)
    busy = threading.Thread(target=httpx.post, args=(hurried.url + "/v1/video/chat",), kwargs=dict(data=LONG))
    busy.start()
    assert wait_for(lambda: _running(hurried.url) == 1)  # it holds the only place, 1900 tokens to go
    r = httpx.post(hurried.url + "/v1/video/chat", data={**LONG, "max_tokens": "300"}, timeout=60)
    busy.join()
    is_error(r, 503)
    assert int(r.headers["retry-after"]) >= 2  # ~1900 tokens x the measured time per token


def test_metrics_can_have_their_own_port(tiny_home, tmp_path):
    port = free_port()
    srv = Server(
        {"AVCHAT_HOME": str(tiny_home), "AVCHAT_ENGINE": "transformers", "AVCHAT_METRICS_PORT": str(port)},
        tmp_path / "metrics.log",
    )
    try:
        srv.wait_ready()
        assert httpx.get(srv.url + "/metrics").status_code == 404
        assert "avchat_requests_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        srv.stop()
