"""The real weights without a network: the phi2 preset fails fast with what to do, and Bunny-format
checkpoints (key names from BAAI-DCAI/Bunny's code, at tiny sizes) import as ours, or say exactly
which keys they could not place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from model import AVChatModel
from model.modeling import mlp2x_gelu
from model.presets import build_tiny_tokenizer, tiny_config
from tests.servers import ROOT, Server

OFFLINE = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_the_phi2_preset_without_a_network_fails_fast_saying_what_to_do(tiny_home, media_dir):
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "model", "ask", str(media_dir / "vllama_boat.mp4"), "?", "--preset", "phi2"],
        cwd=ROOT,
        env={**os.environ, **OFFLINE, "AVCHAT_HOME": str(tiny_home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.perf_counter() - started < 20
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "python -m model download" in out.stderr and "HF_HOME" in out.stderr and "AVCHAT_MODEL" in out.stderr


def test_the_service_on_phi2_without_a_network_says_why_it_is_not_ready(tmp_path):
    srv = Server({**OFFLINE, "AVCHAT_MODEL": "phi2"}, tmp_path / "phi2.log")
    try:
        deadline = time.time() + 60
        body = {}
        while time.time() < deadline:
            try:
                r = __import__("httpx").get(srv.url + "/ready", timeout=2)
                body = r.json()
                if "failed to load" in body.get("error", {}).get("message", ""):
                    break
            except Exception:
                pass
            time.sleep(0.2)
        assert "python -m model download" in body["error"]["message"]
        assert "Traceback" not in srv.log_text()
    finally:
        srv.stop()


# -- Bunny-format checkpoints ---------------------------------------------------------------------------


def _bunny(folder, audio: bool = False, extra: dict | None = None):
    """A merged Bunny(-Phi, SigLIP) checkpoint at tiny sizes, keyed as Bunny's modules key it;
    with ``audio``, an Owlet-like Whisper tower and audio projector beside it."""
    from transformers import PhiForCausalLM, SiglipVisionModel, WhisperModel

    config = tiny_config()
    torch.manual_seed(1)
    vision, llm = SiglipVisionModel(config.vision_config), PhiForCausalLM(config.text_config)
    projector = mlp2x_gelu(config.vision_config.hidden_size, config.hidden_size)
    vision.config.save_pretrained(folder / "siglip")  # what mm_vision_tower names
    state = dict(llm.state_dict())
    state.update({f"model.vision_tower.vision_tower.{k}": v for k, v in vision.state_dict().items()})
    state.update({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()})
    bunny = {
        **config.text_config.to_dict(),
        "model_type": "bunny-phi",
        "architectures": ["BunnyPhiForCausalLM"],
        "mm_vision_tower": str(folder / "siglip"),
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": config.vision_config.hidden_size,
    }
    parts = {"vision": vision, "llm": llm, "projector": projector}
    if audio:
        whisper = WhisperModel(config.audio_config)
        whisper.config.save_pretrained(folder / "whisper")
        audio_projector = mlp2x_gelu(config.audio_config.d_model, config.hidden_size)
        state.update({f"model.audio_tower.audio_tower.{k}": v for k, v in whisper.state_dict().items()})
        state.update({f"model.audio_projector.{k}": v for k, v in audio_projector.state_dict().items()})
        bunny["mm_audio_tower"] = str(folder / "whisper")
        parts.update(audio=whisper, audio_projector=audio_projector)
    state.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(bunny, default=str))
    build_tiny_tokenizer().save_pretrained(folder)
    return parts


def _import(src, dst):
    return subprocess.run(
        [sys.executable, "-m", "model", "import-bunny", str(src), str(dst)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **OFFLINE},
    )


def test_an_owlet_like_checkpoint_imports_with_every_weight_in_place(tmp_path):
    parts = _bunny(tmp_path / "owlet", audio=True)
    out = _import(tmp_path / "owlet", tmp_path / "ours")
    assert out.returncode == 0, out.stderr
    model = AVChatModel.from_pretrained(tmp_path / "ours")
    for ours, theirs in (
        (model.vision_tower, parts["vision"]),
        (model.audio_tower, parts["audio"]),
        (model.vision_projector, parts["projector"]),
        (model.audio_projector, parts["audio_projector"]),
    ):
        for (name, a), (_, b) in zip(sorted(ours.state_dict().items()), sorted(theirs.state_dict().items())):
            assert torch.equal(a, b), name
    ids = torch.tensor([[5, 17, 300, 9]])
    with torch.no_grad():
        assert torch.equal(model.llm(input_ids=ids).logits, parts["llm"](input_ids=ids).logits)


def test_a_bunny_checkpoint_without_audio_imports_and_says_the_audio_is_untrained(tmp_path):
    from transformers import PhiForCausalLM

    parts = _bunny(tmp_path / "bunny")
    out = _import(tmp_path / "bunny", tmp_path / "ours")
    assert out.returncode == 0, out.stderr
    assert "audio projector is untrained" in out.stdout
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["audio_tower"] == "openai/whisper-small" and not (tmp_path / "ours" / "audio").exists()
    llm = PhiForCausalLM.from_pretrained(tmp_path / "ours" / "llm")
    for (name, a), (_, b) in zip(sorted(llm.state_dict().items()), sorted(parts["llm"].state_dict().items())):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ({"model.mm_projector_extra.weight": torch.zeros(2)}, "model.mm_projector_extra.weight"),
        ({"model.resampler.query": torch.zeros(2), "visual_abstractor.bias": torch.zeros(2)}, "2 weights fit no part"),
    ],
)
def test_weights_that_fit_nowhere_stop_the_import_with_their_list(tmp_path, extra, fragment):
    _bunny(tmp_path / "odd", extra=extra)
    out = _import(tmp_path / "odd", tmp_path / "ours")
    assert out.returncode == 2 and fragment in out.stderr and "Traceback" not in out.stderr
    assert all(k in out.stderr for k in extra)
    assert not (tmp_path / "ours").exists()  # nothing half-written


def test_weights_of_the_wrong_shape_stop_the_import(tmp_path):
    _bunny(tmp_path / "bunny")
    siglip = json.loads((tmp_path / "bunny" / "siglip" / "config.json").read_text())
    siglip["intermediate_size"] = 96  # the tower's config and its weights disagree
    (tmp_path / "bunny" / "siglip" / "config.json").write_text(json.dumps(siglip))
    out = _import(tmp_path / "bunny", tmp_path / "ours")
    assert out.returncode == 2 and "vision tower" in out.stderr and "Traceback" not in out.stderr
