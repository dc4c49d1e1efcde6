"""OpenAI's Batch API through the official `openai` SDK against the real service (uvicorn on
127.0.0.1, tiny model): real clips and a bad line, other keys' files and batches, a server
killed mid-batch and started again, cancel, and the limits."""

from __future__ import annotations

import base64
import io
import json
import signal
import time

import openai
import pytest

from tests.servers import Server, wait_for

KEY_A, KEY_B = "batch-a", "batch-b"


def _server(tiny_home, media_dir, data_dir, log, **env) -> Server:
    return Server(
        {
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_ENGINE": "transformers",
            "AVCHAT_API_KEYS": f"{KEY_A},{KEY_B}",
            "AVCHAT_DATA_DIR": str(data_dir),
            "AVCHAT_ALLOWED_LOCAL_MEDIA_PATH": str(media_dir),
            "AVCHAT_SECRET": "batch-tests",
            **env,
        },
        log,
    )


@pytest.fixture(scope="module")
def served(tiny, tiny_home, media_dir, tmp_path_factory):
    srv = _server(
        tiny_home, media_dir, tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("logs") / "batch.log",
        AVCHAT_BATCH_MAX_ACTIVE="2", AVCHAT_BATCH_MAX_FILE_BYTES=str(4 * 2**20),
    )  # fmt: skip
    yield srv.wait_ready()
    srv.stop()
    assert "Traceback" not in srv.log_text()


def _client(srv, key=KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)


def _line(custom_id: str, url: str, **body) -> str:
    content = [{"type": "text", "text": "What do you hear?"}, {"type": "video_url", "video_url": {"url": url}}]
    request = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": content}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request})


def _text_line(custom_id: str, **body) -> str:
    request = {"max_tokens": 4, "messages": [{"role": "user", "content": "Tell me everything."}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request})


def _submit(client, lines: list[str]):
    upload = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode() + b"\n")), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")


def _done(client, batch_id: str, timeout: float = 300):
    batch = wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status in ("completed", "cancelled", "failed") and b,
        timeout,
        0.5,
    )
    assert batch, client.batches.retrieve(batch_id)
    return batch


def _rows(client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]


def test_a_batch_of_real_clips_and_bad_lines_through_the_openai_sdk(served, media_dir):
    client = _client(served)
    dog = base64.b64encode((media_dir / "vllama_dog_barking.mp4").read_bytes()).decode()
    lines = [
        _line("boat", f"file://{media_dir / 'vllama_boat.mp4'}"),
        _line("chaplin", f"file://{media_dir / 'moviepy_chaplin.mp4'}"),
        "this line is not JSON",
        _line("dog", f"data:video/mp4;base64,{dog}"),
        json.dumps({"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {}}),
        _line("outside", "file:///etc/passwd"),
    ]
    batch = _done(client, _submit(client, lines).id)
    assert batch.status == "completed" and batch.request_counts.total == 6
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 3)
    out = _rows(client, batch.output_file_id)
    assert [r["custom_id"] for r in out] == ["boat", "chaplin", "dog"]  # input order
    for row in out:
        body = row["response"]["body"]
        assert row["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert body["usage"]["prompt_tokens_details"]["video_tokens"] == 829
    errors = _rows(client, batch.error_file_id)
    assert [r["custom_id"] for r in errors] == [None, "wrong-url", "outside"]
    assert "not JSON" in errors[0]["error"]["message"] and "/v1/chat/completions" in errors[1]["error"]["message"]
    assert (
        errors[2]["response"]["status_code"] == 400
        and errors[2]["response"]["body"]["error"]["code"] == "path_not_allowed"
    )
    assert batch.id in [b.id for b in client.batches.list()]


def test_files_and_batches_belong_to_the_key_that_made_them(served):
    mine, theirs = _client(served), _client(served, KEY_B)
    batch = _submit(mine, [_text_line("x")])
    for call in (
        lambda: theirs.batches.retrieve(batch.id),
        lambda: theirs.batches.cancel(batch.id),
        lambda: theirs.files.retrieve(batch.input_file_id),
        lambda: theirs.files.content(batch.input_file_id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in theirs.batches.list()]
    assert batch.input_file_id not in [f.id for f in theirs.files.list()]
    _done(mine, batch.id)


def test_the_limits_are_4xx_with_openai_error_bodies(served):
    client = _client(served)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * (5 * 2**20))), purpose="batch")
    assert err.value.status_code == 413
    upload = client.files.create(file=("a.jsonl", io.BytesIO(_text_line("a").encode())), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    slow = [_text_line(f"s{i}", max_tokens=400, ignore_eos=True) for i in range(30)]
    first, second = _submit(client, slow), _submit(client, slow)  # AVCHAT_BATCH_MAX_ACTIVE=2
    with pytest.raises(openai.RateLimitError):
        _submit(client, slow)
    for b in (first, second):
        client.batches.cancel(b.id)
    for b in (first, second):
        done = _done(client, b.id)
        assert done.status == "cancelled" and done.request_counts.completed < 30
        if done.output_file_id:
            assert len(_rows(client, done.output_file_id)) == done.request_counts.completed


def test_a_server_killed_mid_batch_resumes_and_answers_each_line_once(tiny, tiny_home, media_dir, tmp_path):
    data = tmp_path / "data"
    first = _server(tiny_home, media_dir, data, tmp_path / "first.log").wait_ready()
    client = _client(first)
    lines = [_text_line(f"line-{i}", max_tokens=150, ignore_eos=True, seed=i) for i in range(10)]
    batch = _submit(client, lines)
    assert wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 3, 120, 0.2)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    first.log.close()
    second = _server(tiny_home, media_dir, data, tmp_path / "second.log").wait_ready()
    try:
        client = _client(second)
        done = _done(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 10
        ids = [r["custom_id"] for r in _rows(client, done.output_file_id)]
        assert ids == [f"line-{i}" for i in range(10)]  # each exactly once, in input order
    finally:
        second.stop()


def test_interactive_requests_go_first_while_a_batch_runs(served):
    client = _client(served)
    batch = _submit(client, [_text_line(f"bg{i}", max_tokens=200, ignore_eos=True) for i in range(20)])
    assert wait_for(lambda: client.batches.retrieve(batch.id).status == "in_progress", 30, 0.2)
    started = time.perf_counter()
    reply = client.chat.completions.create(model="tiny", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content is not None and time.perf_counter() - started < 10
    client.batches.cancel(batch.id)
    _done(client, batch.id)
