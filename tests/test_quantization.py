"""Quantized serving: the int8 layer against the float one, int8 features against float32 at
tiny and demo, a checkpoint saved int8 that loads as stored, the combinations refused at start
(by the service's own command line), and the demo model's answers unchanged under int8."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from model import AVChatModel
from model import quantization as quant
from model.pipeline import decode, encode, preprocess, project, prompt, prompt_embeds
from tests.servers import ROOT

# The cosines this release promises (README, "Quantization"): the projected features of int8
# encoders against float32's, the lowest over tokens.
VIDEO_COSINE = 0.999
AUDIO_COSINE = 0.99


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double()).min().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, quant.SHORT_ROWS, 40, 729])
def test_the_int8_layer_computes_what_the_float_layer_does(rows, dtype):
    torch.manual_seed(0)
    linear = nn.Linear(192, 320).to(dtype)
    q = quant.Int8Linear.from_linear(linear)
    assert q.weight.dtype == torch.int8 and q.weight_scale.dtype == dtype
    x = torch.randn(2, rows, 192, dtype=dtype)
    with torch.inference_mode():
        ref, out = linear(x.float() if dtype == torch.float32 else x), q(x)
    assert out.shape == ref.shape and out.dtype == dtype
    # Symmetric per-channel int8: the error per weight is at most half a step, so the outputs
    # stay within a cosine far above what any wrong layout (transposed, unscaled) could give.
    assert _cosine(out.reshape(-1, 320), ref.reshape(-1, 320)) > 0.999
    # The short (int8 kernel) and the long (dequantized) paths agree with each other.
    with torch.inference_mode():
        long = nn.functional.linear(x, q.dequantized(dtype), q.bias)
    assert torch.allclose(out.float(), long.float(), atol=2e-2 if dtype == torch.bfloat16 else 1e-4)


def test_a_quantized_layer_keeps_only_int8_weights_and_one_scale_per_output():
    q = quant.Int8Linear.from_linear(nn.Linear(64, 32))
    tensors = dict(q.state_dict())
    assert tensors["weight"].dtype == torch.int8 and tensors["weight"].shape == (32, 64)
    assert tensors["weight_scale"].shape == (32,) and set(tensors) == {"weight", "weight_scale", "bias"}
    assert int(tensors["weight"].abs().max()) == 127  # the full range is used, per channel


def _features(model: AVChatModel, clip) -> dict[str, torch.Tensor]:
    media = decode(str(clip), model.config)
    with torch.inference_mode():
        e = project(model, encode(model, [preprocess(model.processor, media)]))[0]
        p = prompt(model.processor, [{"role": "user", "content": "What do you hear?"}], e)
        logits = model.llm(inputs_embeds=prompt_embeds(model, p, e)[None]).logits[0, -1:]
    return {"video": e.video, "audio": e.audio, "logits": logits}


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_int8_features_stay_within_the_stated_cosine_of_float32(name, tiny_home, media_dir):
    clip = media_dir / "vllama_dog_barking.mp4"
    full = AVChatModel.from_pretrained(name)
    int8 = AVChatModel.from_pretrained(name, quantization="int8")
    layers = sum(isinstance(m, quant.Int8Linear) for m in int8.modules())
    assert layers == sum(type(m) is nn.Linear for p in quant.QUANTIZED_PARTS for m in getattr(full, p).modules())
    assert int8.vision_projector[0].weight.dtype == torch.float32  # the trained projectors are kept
    a, b = _features(full, clip), _features(int8, clip)
    assert _cosine(a["video"], b["video"]) >= VIDEO_COSINE
    assert _cosine(a["audio"], b["audio"]) >= AUDIO_COSINE
    assert _cosine(a["logits"], b["logits"]) >= 0.99
    assert not torch.equal(a["video"], b["video"])  # it is a different computation, not the same one


def test_a_checkpoint_saved_int8_loads_as_stored_without_quantizing_again(tiny_home, tmp_path, monkeypatch, media_dir):
    full = AVChatModel.from_pretrained("tiny")
    full.save_pretrained(tmp_path / "float")
    int8 = AVChatModel.from_pretrained("tiny", quantization="int8")
    int8.save_pretrained(tmp_path / "int8")

    def refuse(*_):
        raise AssertionError("quantized again at load")

    monkeypatch.setattr(quant.Int8Linear, "from_linear", classmethod(refuse))
    for asked in ("none", "int8"):  # an int8 folder is int8 whatever is asked
        loaded = AVChatModel.from_pretrained(tmp_path / "int8", quantization=asked)
        assert loaded.config.quantization == "int8"
        for name, tensor in int8.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
    clip = media_dir / "vllama_dog_barking.mp4"
    assert torch.equal(_features(loaded, clip)["video"], _features(int8, clip)["video"])

    def size(folder):
        return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))

    # Every linear weight is stored as int8, a quarter of its float32 bytes, plus a float32 scale
    # per output channel (and the files' headers).
    linears = [m for p in quant.QUANTIZED_PARTS for m in getattr(full, p).modules() if type(m) is nn.Linear]
    saved = sum(m.weight.numel() * 3 - m.out_features * 4 for m in linears)
    assert size(tmp_path / "int8") <= size(tmp_path / "float") - saved + 64 * 1024
    assert AVChatModel.from_pretrained(tmp_path / "float").config.quantization is None


def test_an_int8_folder_without_int8_weights_is_refused(tiny_home, tmp_path):
    AVChatModel.from_pretrained("tiny").save_pretrained(tmp_path / "m")
    config = (tmp_path / "m" / "config.json").read_text()
    (tmp_path / "m" / "config.json").write_text(config.replace('"quantization": null', '"quantization": "int8"'))
    with pytest.raises(ValueError, match="not an int8 checkpoint|weights are not"):
        AVChatModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize(
    "method, engine, device, says",
    [
        ("int8", "vllm", "cuda", "transformers engine"),
        ("int8", "transformers", "cuda", "on a GPU use fp8"),
        ("fp8", "transformers", "cpu", "AVCHAT_ENGINE=vllm"),
        ("fp8", "vllm", "cpu", "on a CPU use int8"),
        ("awq", "vllm", "cuda", "quantized with AWQ beforehand"),
        ("gptq", "vllm", "cuda", "GPTQModel"),
        ("bnb-4bit", "vllm", "cuda", "bitsandbytes'"),
        ("bnb-8bit", "transformers", "cpu", "on a CPU use int8"),
        ("int4", "transformers", "cpu", "not one of"),
    ],
)
def test_combinations_that_cannot_run_say_what_would(method, engine, device, says):
    with pytest.raises(quant.QuantizationUnavailable, match=says):
        quant.check(method, engine, device)


def test_combinations_that_can_run_pass(tmp_path):
    quant.check("none", "vllm", "cuda")
    quant.check("none", "transformers", "cpu")
    quant.check("int8", "transformers", "cpu")
    quant.check("fp8", "vllm", "cuda:1")
    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "awq", "bits": 4}}')
    quant.check("awq", "vllm", "cuda", str(tmp_path))
    with pytest.raises(quant.QuantizationUnavailable, match="has awq"):
        quant.check("gptq", "vllm", "cuda", str(tmp_path))


def _service(env: dict[str, str], home) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "AVCHAT_HOME": str(home), "AVCHAT_MODEL": "tiny", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "env, says",
    [
        ({"AVCHAT_QUANTIZATION": "fp8", "AVCHAT_ENGINE": "transformers"}, "fp8 is vLLM's, on a GPU"),
        ({"AVCHAT_QUANTIZATION": "int8", "AVCHAT_ENGINE": "vllm"}, "int8 runs on a CPU with the transformers"),
        ({"AVCHAT_QUANTIZATION": "bnb-4bit"}, "bitsandbytes'"),
        ({"AVCHAT_QUANTIZATION": "int4"}, "AVCHAT_QUANTIZATION: Input should be 'none', 'int8'"),
    ],
)
def test_the_service_refuses_such_a_combination_at_start(env, says, tiny_home):
    start = time.monotonic()
    out = _service(env, tiny_home)
    assert out.returncode == 2, out.stderr[-2000:]
    assert says in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - start < 30  # before any model loads


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_demo_models_answers_on_the_synthetic_held_out_set_are_unchanged_under_int8(tmp_path):
    """The experiment's own held-out set (seed 0: 32 short and 16 long clips, 4 questions each),
    answered greedily by the shipped demo model in float32 and with int8 weights."""
    from training.synthetic import evaluate
    from training.synthetic_clips import build

    paths = build(tmp_path, n_train=0, n_test=32, seed=0, n_long=(0, 16))
    demo = ROOT / "model" / "demo" / "checkpoint"
    full = evaluate(demo, paths["test"])
    int8 = evaluate(demo, paths["test"], quantization="int8")
    assert len(full["samples"]) == len(int8["samples"]) == (32 + 16) * 4
    changed = [(a["id"], a["answer"], b["answer"]) for a, b in zip(full["samples"], int8["samples"]) if a != b]
    assert not changed, changed[:5]
    assert int8["accuracy"] == full["accuracy"]
    assert full["accuracy"]["audio"] > 0.9  # the set is the one the demo model learnt to answer


@pytest.mark.slow
def test_the_service_serves_the_demo_model_in_int8_with_the_same_answer(tmp_path):
    """Served with AVCHAT_QUANTIZATION=int8, the demo model answers the sample clip as the
    float32 model does in-process (greedy), and says it runs int8 in its ready line."""
    import json

    from openai import OpenAI

    from model.generation import answer
    from tests.servers import Server

    clip = ROOT / "model" / "demo" / "sample.mp4"
    question = "What colour is the square, and what do you hear?"
    full = AVChatModel.from_pretrained("demo")
    media = decode(str(clip), full.config)
    with torch.inference_mode():
        e = project(full, encode(full, [preprocess(full.processor, media)]))[0]
        p = prompt(full.processor, [{"role": "user", "content": question}], e)
        expected = answer(full, prompt_embeds(full, p, e), 32)[0].strip()
    srv = Server(
        {"AVCHAT_MODEL": "demo", "AVCHAT_QUANTIZATION": "int8", "AVCHAT_ALLOWED_LOCAL_MEDIA_PATH": str(clip.parent)},
        tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        client = OpenAI(base_url=srv.url + "/v1", api_key="none")
        reply = client.chat.completions.create(
            model="demo",
            max_tokens=32,
            temperature=0,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": question},
                        {"type": "video_url", "video_url": {"url": clip.as_uri()}},
                    ],
                }
            ],
        )
    finally:
        srv.stop()
    assert reply.choices[0].message.content.strip() == expected
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]
    assert [line["quantization"] for line in lines if line.get("msg") == "ready"] == ["int8"]
