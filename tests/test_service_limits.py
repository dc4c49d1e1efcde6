"""The service bounded as a whole (real uvicorn on 127.0.0.1, tiny model): a few cheap requests
cannot freeze it or fill it, readiness tells the truth, stops are clean, and the remaining
client mistakes are 4xx. Each test here failed on the service before these bounds existed."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import H264, ffmpeg, lavfi
from tests.servers import Server, metric, wait_for

SMALL_WINDOW = {"AVCHAT_UPLOAD_RATE_WINDOW_S": "1", "AVCHAT_UPLOAD_MIN_BYTES": "1000"}


class _Dribble(BaseHTTPRequestHandler):
    """An allowed origin that answers 200 with a 10 MB body and sends 1 KB of it every 0.2 s:
    every read arrives in time, the whole never does."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("content-length", str(10_000_000))
        self.end_headers()
        try:
            for _ in range(2000):
                self.wfile.write(b"\0" * 1024)
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def dribbler():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dribble)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def local_media(tmp_path_factory, media_dir):
    folder = tmp_path_factory.mktemp("local-media")
    (folder / "boat.mp4").write_bytes((media_dir / "vllama_boat.mp4").read_bytes())
    return folder


@pytest.fixture(scope="module")
def bounded(tiny, tiny_home, tmp_path_factory, dribbler, local_media):
    temp = tmp_path_factory.mktemp("bounded-tmp")
    srv = Server(
        {
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_ENGINE": "transformers",
            "AVCHAT_TEMP_DIR": str(temp),
            "AVCHAT_MAX_UPLOADS": "3",
            "AVCHAT_UPLOAD_FAIR_BYTES_S": "100000",
            "AVCHAT_MAX_BODY_MEMORY_BYTES": str(12 * 2**20),
            "AVCHAT_REQUEST_TIMEOUT_S": "6",
            "AVCHAT_MAX_PIXELS": str(4 * 2**20),
            "AVCHAT_MAX_DECODE_PIXELS": "60000000",
            "AVCHAT_ALLOWED_VIDEO_HOSTS": f"http://127.0.0.1:{dribbler}",
            "AVCHAT_ALLOWED_LOCAL_MEDIA_PATH": str(local_media),
            **SMALL_WINDOW,
        },
        tmp_path_factory.mktemp("logs") / "bounded.log",
    )
    srv.temp = temp
    yield srv.wait_ready()
    srv.stop()
    assert "Traceback" not in srv.log_text(), srv.log_text()[-3000:]


def is_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    return error


def _chat(url: str, content, timeout: float = 60, **extra) -> httpx.Response:
    body = {"max_tokens": 2, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout)


def _video_part(url: str, **extra) -> dict:
    return {"type": "video_url", "video_url": {"url": url}, **extra}


class _HealthWatch:
    """Polls /health from a thread while something else happens; the slowest answer it saw."""

    def __init__(self, url: str):
        self.url, self.worst, self.stop = url, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            started = time.perf_counter()
            httpx.get(self.url + "/health", timeout=60)
            self.worst = max(self.worst, time.perf_counter() - started)
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


# -- nothing heavy on the event loop -------------------------------------------------------------------


def test_a_multi_mib_prompt_is_refused_in_milliseconds_and_health_stays_fast(bounded):
    body = json.dumps({"messages": [{"role": "user", "content": "a " * (5 * 2**19)}]}).encode()  # 5 MiB
    with _HealthWatch(bounded.url) as health:
        started = time.perf_counter()
        r = httpx.post(
            bounded.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=60
        )
        elapsed = time.perf_counter() - started
    error = is_error(r, 400, "context_length_exceeded")
    assert "at least" in error["message"]
    assert elapsed < 3, elapsed  # it used to tokenize for 33 s
    assert health.worst < 1.0, health.worst


def test_two_hundred_thousand_messages_are_refused_before_they_are_validated(bounded):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "a"} for i in range(200_000)]
    with _HealthWatch(bounded.url) as health:
        started = time.perf_counter()
        r = httpx.post(bounded.url + "/v1/chat/completions", json={"messages": messages}, timeout=60)
        elapsed = time.perf_counter() - started
    assert "at most 2048" in is_error(r, 400, "context_length_exceeded")["message"]
    assert elapsed < 3 and health.worst < 1.0, (elapsed, health.worst)


# -- admission by cost ---------------------------------------------------------------------------------


def _slow_sender(port: int, declared: int, stop: threading.Event, result: dict) -> None:
    """A multipart upload just above the minimum rate: 200 bytes every 0.1 s (2 kB/s)."""
    boundary = "dribbledribble"
    head = (
        f"POST /v1/video/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}"
        f"\r\nContent-Length: {declared}\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nWhat?\r\n--{boundary}\r\n'
        'Content-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode())
        s.settimeout(0.1)
        data = b""
        while not stop.is_set():
            try:
                more = s.recv(65536)
                if not more:
                    break
                data += more
                continue
            except TimeoutError:
                pass
            except OSError:
                break
            try:
                s.sendall(b"\0" * 200)
            except OSError:
                break
        result["answer"] = data.decode("latin-1")


def test_slow_but_legal_uploads_never_lock_out_a_fast_one_or_a_follow_up(bounded, media_dir):
    first = httpx.post(
        bounded.url + "/v1/video/chat",
        files={"video": ("boat.mp4", (media_dir / "vllama_boat.mp4").read_bytes())},
        data={"prompt": "?", "max_tokens": "2"},
        timeout=60,
    )
    video_id = first.json()["video_id"]
    evicted = metric(bounded.url, "avchat_uploads_evicted_total")
    stop, results = threading.Event(), [{} for _ in range(3)]
    threads = [threading.Thread(target=_slow_sender, args=(bounded.port, 3_000_000, stop, r)) for r in results]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: metric(bounded.url, "avchat_uploads_in_progress") >= 3)  # every place taken
        follow = httpx.post(
            bounded.url + "/v1/video/chat", data={"video_id": video_id, "prompt": "?", "max_tokens": "2"}, timeout=60
        )
        assert follow.status_code == 200, follow.text  # no file: no upload place needed
        time.sleep(1.2)  # the slow ones have had their first rate window (tenure), and still send
        fast = httpx.post(
            bounded.url + "/v1/video/chat",
            files={"video": ("again.mp4", (media_dir / "vllama_boat.mp4").read_bytes() + b"another file")},
            data={"prompt": "?", "max_tokens": "2"},
            timeout=60,
        )
        assert fast.status_code == 200, fast.text
        assert wait_for(lambda: any(r.get("answer", "").startswith("HTTP/1.1 408") for r in results))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    ended = [r["answer"] for r in results if r.get("answer", "").startswith("HTTP/1.1 408")]
    assert ended and "make room" in ended[0]
    assert metric(bounded.url, "avchat_uploads_evicted_total") >= evicted + 1


def test_a_slow_allowed_origin_ends_with_the_request_timeout(bounded, dribbler):
    started = time.perf_counter()
    r = _chat(bounded.url, [{"type": "text", "text": "?"}, _video_part(f"http://127.0.0.1:{dribbler}/clip.mp4")])
    elapsed = time.perf_counter() - started
    is_error(r, 504)
    assert elapsed < 6 + 3, elapsed  # AVCHAT_REQUEST_TIMEOUT_S=6 covers the fetch too
    assert wait_for(lambda: metric(bounded.url, "avchat_uploads_in_progress") == 0)  # its place is back
    assert wait_for(lambda: not [p for p in bounded.temp.iterdir()])  # and its file is gone


def test_json_bodies_are_bounded_in_memory_all_together(bounded):
    """One 10 MiB body held open at a legal rate takes most of the 12 MiB budget: a second big
    body is 503 until it is gone; a small one still passes."""
    stop = threading.Event()
    declared = 11 * 2**20

    def hold():
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", bounded.port)) as s:
            s.sendall(head.encode() + b'{"messages": "' + b"a" * (10 * 2**20))
            while not stop.is_set():
                s.sendall(b"a" * 200)
                time.sleep(0.1)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert wait_for(lambda: metric(bounded.url, "avchat_body_memory_bytes") >= 10 * 2**20)
        big = json.dumps({"messages": [{"role": "user", "content": "x" * (3 * 2**20)}]})
        r = httpx.post(bounded.url + "/v1/chat/completions", content=big, headers={"content-type": "application/json"})
        assert is_error(r, 503)["type"] == "overloaded_error" and int(r.headers["retry-after"]) >= 1
        assert _chat(bounded.url, "hi").status_code == 200
    finally:
        stop.set()
        holder.join(10)
    assert wait_for(lambda: metric(bounded.url, "avchat_body_memory_bytes") == 0)


# -- decode budgets ------------------------------------------------------------------------------------


def test_pixels_times_frames_over_the_budget_are_refused_before_decoding(bounded, tmp_path):
    # 640x480 at 30 fps for 8 s, one keyframe: sampling decodes ~240 frames, 74 M pixels > 60 M.
    clip = tmp_path / "vga.mp4"
    ffmpeg(*lavfi("testsrc2=size=640x480:rate=30:duration=8"), *H264, "-g", "300", str(clip))
    started = time.perf_counter()
    r = httpx.post(
        bounded.url + "/v1/video/chat",
        files={"video": ("vga.mp4", clip.read_bytes())},
        data={"prompt": "?", "max_tokens": "2", "input_modalities": "video"},
        timeout=60,
    )
    assert "AVCHAT_MAX_DECODE_PIXELS" in is_error(r, 400, "media_over_limit")["message"]
    assert time.perf_counter() - started < 3
    window = httpx.post(  # the same file, a short window: under the budget
        bounded.url + "/v1/video/chat",
        files={"video": ("vga.mp4", clip.read_bytes())},
        data={"prompt": "?", "max_tokens": "2", "start": "0", "end": "3"},
        timeout=60,
    )
    assert window.status_code == 200, window.text


def _png_with_text_bomb(path, inflated: int = 2**30) -> bytes:
    ffmpeg(*lavfi("color=c=red:size=32x32"), "-frames:v", "1", str(path))
    png = path.read_bytes()
    packer = zlib.compressobj(9)
    zeros = b"\0" * 2**24
    data = b"".join(packer.compress(zeros) for _ in range(inflated // len(zeros))) + packer.flush()
    payload = b"Comment\0\0" + data
    chunk = struct.pack(">I", len(payload)) + b"zTXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + payload) & 0xFFFFFFFF)
    at = 8 + 25  # after the signature and IHDR
    return png[:at] + chunk + png[at:]


def test_an_image_whose_text_inflates_to_a_gibibyte_is_refused_at_once(bounded, tmp_path):
    bomb = _png_with_text_bomb(tmp_path / "red.png")
    started = time.perf_counter()
    r = httpx.post(bounded.url + "/v1/video/chat", files={"image": ("red.png", bomb)}, data={"prompt": "?"}, timeout=60)
    assert "compressed text" in is_error(r, 400, "media_over_limit")["message"]
    assert time.perf_counter() - started < 2


def _huge_png(width: int, height: int) -> bytes:
    """A 1-bit grey PNG of any size, a few hundred kB (ffmpeg itself cannot size 20000 x 20000)."""
    rows = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    data = b"".join(rows.compress(row) for _ in range(height)) + rows.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_400_media_over_limit(bounded):
    for width, height in ((2500, 2500), (20000, 20000)):
        r = httpx.post(
            bounded.url + "/v1/video/chat",
            files={"image": ("big.png", _huge_png(width, height))},
            data={"prompt": "?"},
            timeout=60,
        )
        assert "AVCHAT_MAX_PIXELS" in is_error(r, 400, "media_over_limit")["message"], (width, height)


# -- memory per request ---------------------------------------------------------------------------------


def test_a_uuid_is_a_name_not_a_payload(bounded, media_dir):
    long = "u" * 257
    r = _chat(bounded.url, [{"type": "text", "text": "?"}, {"type": "video_url", "uuid": long}])
    assert is_error(r, 422)["param"] == "messages.0.content.1.uuid"
    r = httpx.post(
        bounded.url + "/v1/video/chat",
        files={"video": ("boat.mp4", (media_dir / "vllama_boat.mp4").read_bytes())},
        data={"prompt": "?", "uuid": long},
        timeout=60,
    )
    assert is_error(r, 422)["param"] == "uuid"


def test_a_uuid_is_kept_only_for_a_request_that_succeeds(bounded, media_dir):
    url = "data:video/mp4;base64," + base64.b64encode((media_dir / "vllama_boat.mp4").read_bytes()).decode()
    failed = _chat(
        bounded.url, [{"type": "text", "text": "?"}, _video_part(url, uuid="never-answered")], max_tokens=2000
    )
    is_error(failed, 400, "context_length_exceeded")
    later = _chat(bounded.url, [{"type": "text", "text": "?"}, {"type": "video_url", "uuid": "never-answered"}])
    is_error(later, 404, "video_not_found")
    ok = _chat(bounded.url, [{"type": "text", "text": "?"}, _video_part(url, uuid="answered")])
    assert ok.status_code == 200, ok.text
    again = _chat(bounded.url, [{"type": "text", "text": "?"}, {"type": "video_url", "uuid": "answered"}])
    assert again.status_code == 200 and again.json()["video_id"] == ok.json()["video_id"]


# -- client mistakes that were 500s ----------------------------------------------------------------------


def test_a_nul_byte_in_a_file_url_is_400(bounded, local_media):
    r = _chat(bounded.url, [{"type": "text", "text": "?"}, _video_part(f"file://{local_media}/boat%00.mp4")])
    assert "NUL" in is_error(r, 400)["message"]


def test_a_malformed_ipv6_url_is_400(bounded):
    r = _chat(bounded.url, [{"type": "text", "text": "?"}, _video_part("http://[::1/clip.mp4")])
    assert "not a valid URL" in is_error(r, 400)["message"]


def test_a_text_part_whose_text_is_a_number_is_422_on_the_form_route(bounded, media_dir):
    r = httpx.post(
        bounded.url + "/v1/video/chat",
        files={"video": ("boat.mp4", (media_dir / "vllama_boat.mp4").read_bytes())},
        data={"messages": json.dumps([{"role": "user", "content": [{"type": "text", "text": 5}]}])},
        timeout=60,
    )
    assert is_error(r, 422)["param"].startswith("messages")


def test_a_lone_surrogate_in_a_message_is_400(bounded):
    body = b'{"max_tokens": 2, "messages": [{"role": "user", "content": "what \\ud800 is this"}]}'
    r = httpx.post(bounded.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert "surrogate" in is_error(r, 400)["message"]


# -- cross-site and rebinding ------------------------------------------------------------------------------


def test_the_json_route_takes_only_application_json(bounded):
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": ctype} if ctype else {}
        r = httpx.post(bounded.url + "/v1/chat/completions", content=body, headers=headers)
        is_error(r, 415, "unsupported_content_type")
    ok = httpx.post(
        bounded.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200, ok.text


def test_only_the_bound_address_and_localhost_names_are_answered(bounded):
    for host in ("attacker.example", "attacker.example:80", "10.0.0.1"):
        r = httpx.get(bounded.url + "/v1/models", headers={"host": host})
        is_error(r, 400, "invalid_host")
    for host in (f"127.0.0.1:{bounded.port}", f"localhost:{bounded.port}", "LOCALHOST", f"[::1]:{bounded.port}"):
        assert httpx.get(bounded.url + "/v1/models", headers={"host": host}).status_code == 200, host


def test_the_page_sends_security_headers_and_docs_pin_their_scripts(bounded):
    page = httpx.get(bounded.url + "/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    for path in ("/docs", "/redoc"):
        html = httpx.get(bounded.url + path).text
        sources = [part.split('"', 1)[0] for part in html.split('src="')[1:]] + [
            part.split('"', 1)[0] for part in html.split('href="')[1:]
        ]
        assert sources and all("@" in s and s.split("@", 1)[1][0].isdigit() for s in sources), sources
        assert html.count('integrity="sha384-') == len(sources) and 'crossorigin="anonymous"' in html


def test_errors_never_show_the_temp_folder(bounded):
    junk = b"\0\0\0\x18ftypisom" + os.urandom(4000)  # an mp4 signature, then nothing readable
    r = httpx.post(bounded.url + "/v1/video/chat", files={"video": ("v.mp4", junk)}, data={"prompt": "?"})
    message = is_error(r, 415)["message"]
    assert str(bounded.temp) not in message and "avchat-upload" not in message and "file:" not in message


# -- readiness tells the truth -------------------------------------------------------------------------------


def test_readiness_is_503_with_the_reason_when_ffmpeg_cannot_run(tiny_home, tmp_path):
    srv = Server(
        {"AVCHAT_HOME": str(tiny_home), "AVCHAT_ENGINE": "transformers", "AVCHAT_FFMPEG": str(tmp_path / "no-ffmpeg")},
        tmp_path / "no-ffmpeg.log",
    )
    try:
        assert wait_for(lambda: _status(srv.url + "/health") == 200, 60)
        r = wait_for(lambda: _not_loading(srv.url + "/ready"), 60)
        assert "ffmpeg is not usable" in is_error(r, 503)["message"] and r.headers["retry-after"]
        assert is_error(httpx.get(srv.url + "/v1/models"), 503)
    finally:
        srv.stop()


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def _not_loading(url: str):
    r = httpx.get(url, timeout=5)
    return r if "still loading" not in r.text else None


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return out.returncode == 0


def test_a_full_temp_disk_is_507_with_retry_after_and_the_service_carries_on(tiny_home, tmp_path, media_dir):
    full = tmp_path / "full"
    if not _mount_tmpfs(full, "1m"):
        pytest.skip("needs permission to mount a 1 MiB tmpfs (root)")
    srv = Server(
        {"AVCHAT_HOME": str(tiny_home), "AVCHAT_ENGINE": "transformers", "AVCHAT_TEMP_DIR": str(full)},
        tmp_path / "full.log",
    )
    try:
        srv.wait_ready()
        big = os.urandom(3 * 2**20)
        r = httpx.post(srv.url + "/v1/video/chat", files={"video": ("big.mp4", big)}, data={"prompt": "?"})
        assert is_error(r, 507, "insufficient_storage") and r.headers["retry-after"]
        assert list(full.iterdir()) == []  # the partial file is gone
        small = (media_dir / "vllama_boat.mp4").read_bytes()
        assert len(small) < 2**20
        ok = httpx.post(
            srv.url + "/v1/video/chat", files={"video": ("b.mp4", small)}, data={"prompt": "?", "max_tokens": "2"}
        )
        assert ok.status_code == 200, ok.text
    finally:
        srv.stop()
        subprocess.run(["umount", str(full)], check=False)
    assert "Traceback" not in srv.log_text()
