"""More than one replica (real uvicorn processes on 127.0.0.1, tiny model): a shared feature tier
in a real redis-server, and the shipped HAProxy router in front. Upload to one replica, ask the
other; Redis down and back; tampered values; a replica killed under load."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from clients import Client
from tests.servers import ROOT, RedisServer, Router, Server, metric, wait_for

KEY_A, KEY_B = "key-a", "key-b"
A, B = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("logs") / "redis.log").start()
    yield server
    server.stop()


def _replica(name: str, tiny_home, redis, logs) -> Server:
    return Server(
        {
            "AVCHAT_HOME": str(tiny_home),
            "AVCHAT_ENGINE": "transformers",
            "AVCHAT_API_KEYS": f"{KEY_A},{KEY_B}",
            "AVCHAT_SECRET": "the-fleet-shares-this",
            "AVCHAT_FEATURE_STORE": redis.url,
            "AVCHAT_FEATURE_STORE_TIMEOUT_S": "0.25",
            "AVCHAT_METRICS_REQUIRE_KEY": "false",
        },
        logs / f"{name}.log",
    )


@pytest.fixture(scope="module")
def fleet(tiny, tiny_home, redis, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    replicas = [_replica(f"replica-{i}", tiny_home, redis, logs) for i in range(2)]
    for r in replicas:
        r.wait_ready()
    yield replicas
    for r in replicas:
        if r.proc.poll() is None:
            r.stop()
            assert "Traceback" not in r.log_text(), r.log_text()[-3000:]


def _ask(url, headers=A, path=None, **fields):
    files = {"video": (path.name, path.read_bytes())} if path is not None else None
    data = {"prompt": "What?", "max_tokens": "2", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(url + "/v1/video/chat", files=files, data=data, headers=headers, timeout=120)


def _work(replica) -> tuple[float, float]:
    """Decodes and encoder batches a replica has run."""
    return metric(replica.url, "avchat_decode_seconds_count"), metric(replica.url, "avchat_encode_seconds_count")


def test_a_video_uploaded_to_one_replica_is_answered_by_the_other_from_the_store(fleet, media_dir):
    one, other = fleet
    first = _ask(one.url, path=media_dir / "vllama_dog_barking.mp4", uuid="barking")
    assert first.status_code == 200, first.text
    video_id = first.json()["video_id"]
    assert first.headers["x-avchat-affinity"] == video_id  # what a router hashes follow-ups on
    work = _work(other)
    hits = metric(other.url, "avchat_feature_store_total", 'result="hit"')
    by_id = wait_for(lambda: (r := _ask(other.url, video_id=video_id)).status_code == 200 and r, 5)
    assert by_id, "the other replica never found the video"
    assert by_id.json()["usage"]["prompt_tokens_details"] == first.json()["usage"]["prompt_tokens_details"]
    assert _ask(other.url, uuid="barking").status_code == 200
    assert _work(other) == work  # no decode, no encoder on the second replica
    assert metric(other.url, "avchat_feature_store_total", 'result="hit"') >= hits + 1
    for replica in fleet:  # another key: absent everywhere
        for fields in ({"video_id": video_id}, {"uuid": "barking"}):
            r = _ask(replica.url, headers=B, **fields)
            assert r.status_code == 404 and r.json()["error"]["code"] == "video_not_found", r.text


def test_the_same_upload_on_another_replica_skips_decoding(fleet, media_dir):
    one, other = fleet
    path = media_dir / "vllama_boat.mp4"
    assert _ask(one.url, path=path).status_code == 200
    work = _work(other)
    again = wait_for(lambda: (r := _ask(other.url, path=path)).status_code == 200 and r, 5)
    assert again and _work(other) == work


def _stored_key(redis, video_id: str) -> bytes:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    keys = wait_for(lambda: client.keys(f"avchat:1:*:video:{video_id}"), 5)
    assert len(keys) == 1, keys
    return client, keys[0]


def test_tampered_or_foreign_values_are_refused_never_unpickled(fleet, redis, media_dir, tmp_path):
    import pickle

    import torch
    from safetensors.torch import save

    one, other = fleet
    path = media_dir / "moviepy_chaplin.mp4"
    video_id = _ask(one.url, path=path).json()["video_id"]
    client, key = _stored_key(redis, video_id)
    good = client.get(key)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    header_only = save({"video": torch.zeros(3)}, metadata={"format": "avchat-features/1", "owner": "x"})
    refused = metric(other.url, "avchat_feature_store_total", 'result="refused"')
    for value in (b"not a value", pickle.dumps(Exploit()), header_only, good[:-100]):
        client.set(key, value)
        r = _ask(other.url, video_id=video_id)
        assert r.status_code == 404, r.text  # a miss, never a 5xx
    assert not marker.exists()
    assert metric(other.url, "avchat_feature_store_total", 'result="refused"') >= refused + 4
    assert other.log_text().count('"refused a stored value"') == 1  # logged once
    client.set(key, good)
    assert _ask(other.url, video_id=video_id).status_code == 200  # the genuine value still works


def test_redis_down_costs_no_5xx_and_the_tier_resumes_when_it_is_back(fleet, redis, media_dir):
    one, other = fleet
    redis.stop()
    try:
        started = time.perf_counter()
        r = _ask(one.url, path=media_dir / "vllava_sample_demo_1.mp4")
        assert r.status_code == 200, r.text
        video_id = r.json()["video_id"]
        assert _ask(one.url, video_id=video_id).status_code == 200  # L1 carries on
        assert time.perf_counter() - started < 30
        ready = wait_for(lambda: httpx.get(one.url + "/ready").json().get("feature_store") == "degraded", 10)
        assert ready and httpx.get(one.url + "/ready").status_code == 200
        missing = _ask(other.url, video_id=video_id)
        assert missing.status_code == 404  # the other replica cannot have it: a clean miss
    finally:
        redis.start()
    assert wait_for(lambda: httpx.get(one.url + "/ready").json()["feature_store"] == "ok", 15)
    fresh = _ask(one.url, path=media_dir / "moviepy_big_buck_bunny_432_433.webm")
    vid = fresh.json()["video_id"]
    assert wait_for(lambda: _ask(other.url, video_id=vid).status_code == 200, 10)  # shared hits again


# -- the router ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routed(fleet, tmp_path_factory):
    router = Router([f"127.0.0.1:{r.port}" for r in fleet], tmp_path_factory.mktemp("logs") / "router.log")
    yield router.wait_ready()
    router.stop()


def _chats(replica) -> float:
    return metric(replica.url, "avchat_requests_total", 'route="/v1/video/chat",status="200"')


def test_through_the_router_a_conversation_stays_on_one_replica(fleet, routed, media_dir):
    before = [_chats(r) for r in fleet]
    with Client(base_url=routed.url, api_key=KEY_A) as client:
        chat = client.video.chat.conversation(media_dir / "vllama_dog_barking.mp4", max_tokens=2)
        for question in ("What do you hear?", "Is it loud?", "And then?"):
            chat.ask(question)
    served = [_chats(r) - b for r, b in zip(fleet, before)]
    assert sorted(served) == [0, 3], served  # all three turns, the upload included, on one replica
    video_id = chat.video_id
    before = [_chats(r) for r in fleet]
    for _ in range(4):  # follow-ups by video_id hash to one replica too
        r = httpx.post(
            routed.url + "/v1/video/chat",
            data={"video_id": video_id, "prompt": "?", "max_tokens": "2"},
            headers={**A, "X-Avchat-Affinity": video_id},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    assert sorted(_chats(r) - b for r, b in zip(fleet, before)) == [0, 4]


def test_a_replica_killed_under_load_costs_only_its_in_flight_requests(fleet, routed, media_dir):
    payload = base64.b64encode((media_dir / "vllama_boat.mp4").read_bytes()).decode()
    body = {
        "max_tokens": 40,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "?"},
                    {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{payload}"}},
                ],
            }
        ],
    }
    victim = fleet[1]
    results: list[tuple[float, int, dict]] = []
    killed_at: list[float] = []

    def one(i):
        started = time.monotonic()
        r = httpx.post(routed.url + "/v1/chat/completions", json=body, headers=A, timeout=120)
        results.append((started, r.status_code, r.json()))

    def kill():
        time.sleep(2)
        killed_at.append(time.monotonic())
        os.kill(victim.proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(48)))
    killer.join()
    victim.proc.wait()
    failures = [(t, s, b) for t, s, b in results if s != 200]
    assert len(failures) <= 4, failures  # at most the ones in flight on the victim when it died
    for t, status, error in failures:
        assert status in (502, 503) and set(error["error"]) == {"message", "type", "param", "code"}, error
        assert t < killed_at[0] + 1.0, (t, killed_at)  # started before the kill (or as it happened)
    assert sum(1 for t, s, _ in results if t > killed_at[0] + 1.0 and s == 200) >= 4  # the survivor answers


def test_the_fleets_files_agree_with_the_router(fleet):
    compose = pytest.importorskip("yaml").safe_load((ROOT / "docker-compose.fleet.yml").read_text())
    router = compose["services"]["router"]["environment"]
    replicas = sorted(k for k in compose["services"] if k.startswith("api-"))
    assert [router[f"AVCHAT_REPLICA_{i}"] for i in range(len(replicas))] == [f"{name}:8000" for name in replicas]
    for name in replicas:
        env = compose["services"][name]["environment"]
        assert env["AVCHAT_FEATURE_STORE"].startswith("redis://redis:") and env["AVCHAT_SECRET"]
    assert json.dumps(compose).count("device_ids") == len(replicas)  # one GPU each
