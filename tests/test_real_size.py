"""The paper's geometry on this CPU: phi2-shape (SigLIP-so400m, Whisper-small, Phi-2's sizes and
tokenizer; random weights built offline) answers a real clip through the command line and the
service on both engines, in bfloat16 and under 16 GB, and trains for a few steps.

The clip is the first quarter second of a real one (6 frames, so SigLIP's share stays short);
the prompt still holds the full 64 audio and 829 video tokens (100 frame slots + 729 patches).
bench/real_size.py measures the same model at full length.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch

from clients import Client
from tests.servers import Server

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is happening, and what do you hear?"
GIB = 2**30


@pytest.fixture(scope="module")
def phi2_shape(tiny_home) -> Path:
    """Built once into the session's AVCHAT_HOME (about a minute, 6.5 GB on disk)."""
    from model import presets
    from model.modeling import write_random_checkpoint

    return Path(presets.resolve("phi2-shape", build=write_random_checkpoint))


@pytest.fixture(scope="module")
def clip(media_dir) -> Path:
    return media_dir / "vllama_dog_barking.mp4"  # 24 fps with sound: 0-0.25 s is 6 frames


def _peak_rss(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


def test_the_command_line_answers_a_real_clip_at_real_size(phi2_shape, clip):
    out = subprocess.run(
        [sys.executable, "-m", "model", "ask", str(clip), QUESTION, "--preset", "phi2-shape", "--dtype", "bfloat16"]
        + ["--end", "0.25", "--max-tokens", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    tokens = re.search(
        r"\[tokens\] prompt (\d+) = audio (\d+) \+ video (\d+) \+ text (\d+); generated (\d+)", out.stderr
    )
    assert tokens, out.stderr[-2000:]
    total, audio, video, text, generated = map(int, tokens.groups())
    assert (audio, video) == (64, 829) and total == audio + video + text and generated >= 1
    assert re.search(r"\[media\] 0\.2 s analysed, 6 frames", out.stderr)
    peak = float(re.search(r"peak memory ([\d.]+) GiB", out.stderr).group(1))
    assert peak < 16, f"{peak} GiB"


def _server(tmp_path, engine: str, extra: dict | None = None) -> Server:
    env = {"AVCHAT_MODEL": "phi2-shape", "AVCHAT_ENGINE": engine, "AVCHAT_DTYPE": "bfloat16", **(extra or {})}
    return Server(env, tmp_path / f"{engine}.log").wait_ready(timeout=600)


def test_the_service_answers_at_real_size_with_the_transformers_engine(phi2_shape, clip, tmp_path):
    server = _server(tmp_path, "transformers")
    try:
        with Client(base_url=server.url, max_retries=0, timeout=600) as sdk:
            r = sdk.video.chat.create(video=clip, prompt=QUESTION, start=0, end=0.25, max_tokens=4)
        details = r.usage.prompt_tokens_details
        assert (details.audio_tokens, details.video_tokens) == (64, 829)
        assert r.media.frames == 6 and r.usage.completion_tokens >= 1 and r.choices[0].message.content
        assert _peak_rss(server.proc.pid) < 16 * GIB
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


def test_the_service_answers_at_real_size_with_vllm_holding_the_only_copy_of_the_llm(phi2_shape, clip, tmp_path):
    """vLLM's CPU build runs Phi-2's attention (head size 80); the service process keeps the
    encoders, the projectors and the embedding table, not a second 5.6 GB LLM."""
    server = _server(tmp_path, "vllm", {"VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        models = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        assert models.models.list().data[0].model_extra["engine"] == "vllm"
        url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
        content = [{"type": "text", "text": QUESTION}, {"type": "video_url", "video_url": {"url": url, "end": 0.25}}]
        r = models.chat.completions.create(
            model="phi2-shape", messages=[{"role": "user", "content": content}], max_tokens=4
        )
        details = r.usage.prompt_tokens_details
        assert (details.audio_tokens, details.video_tokens) == (64, 829)
        assert r.usage.completion_tokens >= 1 and r.model_extra["media"]["frames"] == 6
        # Phi-2's LLM alone is 5.6 GB in bfloat16; SigLIP + Whisper + projectors + embeddings are ~1.5 GB.
        service_peak = _peak_rss(server.proc.pid)
        assert service_peak < 4.5 * GIB, f"the service process peaked at {service_peak / GIB:.1f} GiB"
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


@pytest.mark.timeout(1200)  # its finetune has 900 s
def test_a_few_training_steps_at_real_size(phi2_shape, clip, tiny_home, tmp_path):
    """Stage 2 on phi2-shape: LoRA r=128 on every linear layer of the LLM and both projectors,
    frozen weights in bfloat16, gradient checkpointing; two steps move the adapter and the
    projectors and leave a finite loss."""
    # Training decodes whole files: the clip's first quarter second, cut with ffmpeg (6 frames).
    from tests.conftest import ffmpeg

    short = tmp_path / "dog-0.25s.mp4"
    ffmpeg("-i", str(clip), "-t", "0.25", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(short))
    sample = {
        "id": "dog-0",
        "video": str(short),
        "audio_from_video": True,
        "conversations": [
            {"from": "human", "value": "<video>\n" + QUESTION},
            {"from": "gpt", "value": "A man opens a patio door while a dog barks."},
        ],
    }
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps(sample) + "\n")
    out = tmp_path / "run"
    args = [
        "--model", "phi2-shape", "--data", str(manifest), "--output-dir", str(out),
        "--frozen-dtype", "bfloat16", "--gradient-checkpointing", "true", "--max-steps", "2",
        "--per-device-train-batch-size", "1", "--gradient-accumulation-steps", "1", "--logging-steps", "1",
        "--warmup-ratio", "0", "--dataloader-num-workers", "0", "--report-to", "none", "--export", "false",
    ]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "training.finetune", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-4000:]
    history = json.loads((out / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and all(0 < x < 100 for x in losses), history
    from safetensors.torch import load_file

    trained = load_file(out / "checkpoint-2" / "trainable.safetensors")
    lora_b = [v for k, v in trained.items() if "lora_B" in k]
    assert len(lora_b) == 32 * 6, "LoRA on q, k, v, dense, fc1, fc2 of each of Phi-2's 32 layers"
    assert all(v.dtype == torch.float32 for v in trained.values()), "what trains stays float32"
    assert max(v.abs().max().item() for v in lora_b) > 0, "the adapter moved from its zero start"
    assert any(k.startswith("vision_projector") for k in trained) and any(
        k.startswith("audio_projector") for k in trained
    )


def test_the_gpu_benchmark_runs_its_whole_table_on_a_cpu(tiny_home):
    """bench/gpu.sh's benchmark, on tiny and the CPU: every row of the table it will print on a
    GPU host, both engines, so that the first GPU run does not find it broken."""
    out = subprocess.run(
        [sys.executable, "bench/gpu_bench.py", "--device", "cpu", "--preset", "tiny", "--tokens", "8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:4] for line in out.stdout.splitlines() if line.startswith("| ")
    }
    for engine in ("transformers", "vllm"):
        for level in (1, 16):
            measured, floor = rows[f"{engine}, {level} concurrent"]
            assert re.search(r"TTFT \d+ ms, \d+ tokens/s", measured) and "tokens/s" in floor
        assert re.search(r"[\d.]+ GiB", rows[next(k for k in rows if k.startswith(f"{engine}, peak memory"))][0])
    assert "audio 64 + video 829" in rows["prompt"][0]
    assert re.search(r"[\d.]+ ms", rows["SigLIP, 100 frames"][0]) and "75 ms" in rows["SigLIP, 100 frames"][1]
