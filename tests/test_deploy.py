"""The container files, checked without a Docker engine (none runs here)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _routes() -> set[str]:
    from service.app import create_app
    from service.settings import Settings

    return set(create_app(Settings()).openapi()["paths"])


def _path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def test_compose_serves_on_one_gpu_with_volumes_and_a_real_health_check():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = compose["services"]["avchat"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    mounts = {v.split(":")[1] for v in svc["volumes"]}
    assert {"/data/hf", "/data/checkpoints"} <= mounts
    assert "hf-cache" in compose["volumes"]
    for key in ("AVCHAT_MODEL", "AVCHAT_API_KEYS", "AVCHAT_ENGINE"):
        assert key in svc["environment"]
    assert svc["restart"] in ("unless-stopped", "always")
    test = svc["healthcheck"]["test"]
    url = next(part for part in test if part.startswith("http"))
    assert _path_of(url) in _routes()


def test_compose_train_profile_runs_finetune_on_the_same_volumes():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    train, serve = compose["services"]["train"], compose["services"]["avchat"]
    assert train["profiles"] == ["train"]
    command = train["command"]
    assert command[:3] == ["python", "-m", "training.finetune"]
    assert importlib.util.find_spec("training.finetune") is not None
    assert set(serve["volumes"]) <= set(train["volumes"])


def test_dockerfile_command_and_health_check_name_things_that_exist():
    text = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:3] == ["python", "-m", "service"] and importlib.util.find_spec("service.__main__") is not None
    health = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (.*)", text).group(1)
    url = re.search(r"https?://\S+", health).group(0)
    assert _path_of(url) == "/ready" and "/ready" in _routes()
    assert re.search(r"^USER (?!root)\w+", text, re.M), "runs as a non-root user"
    assert re.search(r'vllm==0\.(1[1-9]|[2-9]\d)', text), "pins a vLLM release with V1 prompt embeddings"
    assert "ffmpeg" in text
    for copied in re.findall(r"^COPY (\w+) ", text, re.M):
        assert (ROOT / copied).exists(), copied
