"""The container files, checked without a Docker engine (none runs here)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
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


@pytest.mark.parametrize(
    "stage, manifests", [("finetune", ["videoinstruct.jsonl"]), ("pretrain", ["commonvoice.jsonl", "audiocaps.jsonl"])]
)
def test_compose_train_runs_a_valid_distributed_command_on_the_same_volumes(tmp_path, stage, manifests):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    train, serve = compose["services"]["train"], compose["services"]["avchat"]
    assert train["profiles"] == ["train"] and train["entrypoint"] == ["scripts/train.sh"]
    assert set(serve["volumes"]) <= set(train["volumes"])
    assert any(v.endswith(":/data/datasets:ro") for v in train["volumes"])  # the data may be read-only
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    # The command the entry point runs, with the roots the volumes provide, validated by the project itself.
    data, runs = tmp_path / "datasets", tmp_path / "checkpoints"
    for name in manifests:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("{}\n")
    (runs / "stage1" / "final").mkdir(parents=True)
    env = {
        **os.environ,
        "AVCHAT_STAGE": stage,
        "AVCHAT_DATA_ROOT": str(data),
        "AVCHAT_CHECKPOINTS": str(runs),
        "AVCHAT_GPUS": "8",
    }
    out = subprocess.run(
        ["scripts/train.sh", "--print", "--max-steps", "5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    command = out.stdout.split("\n")[:-1]
    assert command[:5] == ["torchrun", "--standalone", "--nproc-per-node", "8", "-m"]
    assert command[5] == f"training.{stage}" and command[-2:] == ["--max-steps", "5"]  # user arguments last
    from training.config import parse_config

    cfg = parse_config(command[6:], stage=stage)  # exits with the list of problems if the command is invalid
    assert cfg.max_steps == 5 and cfg.data_root == str(data)
    assert cfg.output_dir == str(runs / ("stage2" if stage == "finetune" else "stage1"))


def test_dockerfile_command_and_health_check_name_things_that_exist():
    text = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:3] == ["python", "-m", "service"] and importlib.util.find_spec("service.__main__") is not None
    health = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (.*)", text).group(1)
    url = re.search(r"https?://\S+", health).group(0)
    assert _path_of(url) == "/ready" and "/ready" in _routes()
    assert re.search(r"^USER (?!root)\w+", text, re.M), "runs as a non-root user"
    assert re.search(r"vllm==0\.(1[1-9]|[2-9]\d)", text), "pins a vLLM release with V1 prompt embeddings"
    assert "ffmpeg" in text
    for copied in re.findall(r"^COPY (\w+) ", text, re.M):
        assert (ROOT / copied).exists(), copied
