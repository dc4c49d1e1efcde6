"""Training on tiny, CPU: data preparation on fixture data in each source format, the feature
cache, both stages (what changes and what never does), resume after a kill, and the export."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from model import AVChatModel
from tests.conftest import H264, ffmpeg, lavfi
from tests.servers import ROOT, Server


def _run(module: str, *args: str, home: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "AVCHAT_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw
    )
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


# -- fixture data in each source format ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    # CommonVoice: a TSV and clips/ with mp3s; one row's clip is missing, one is not audio.
    cv = d / "cv"
    (cv / "clips").mkdir(parents=True)
    sentences = ["a low tone", "a high tone", "a middle tone", "a very high tone"]
    rows = []
    for i, (freq, sentence) in enumerate(zip((220, 880, 440, 1760), sentences)):
        ffmpeg("-f", "lavfi", "-i", f"sine=frequency={freq}:duration=1", "-ac", "1", str(cv / "clips" / f"c{i}.mp3"))
        rows.append({"client_id": "x", "path": f"c{i}.mp3", "sentence": sentence, "up_votes": "2"})
    rows.append({"client_id": "x", "path": "gone.mp3", "sentence": "missing", "up_votes": "2"})
    (cv / "clips" / "bad.mp3").write_text("not audio")
    rows.append({"client_id": "x", "path": "bad.mp3", "sentence": "corrupt", "up_votes": "2"})
    with open(cv / "train.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    # AudioCaps: a CSV and audio named by youtube_id; one file is missing.
    ac = d / "ac"
    (ac / "audio").mkdir(parents=True)
    caps = []
    for i, (src, caption) in enumerate(
        [("anoisesrc=d=1:c=pink", "static noise hisses"), ("sine=frequency=300:duration=1", "a steady hum")]
    ):
        ffmpeg("-f", "lavfi", "-i", src, "-ac", "1", str(ac / "audio" / f"yt{i}.wav"))
        caps.append({"audiocap_id": str(100 + i), "youtube_id": f"yt{i}", "start_time": "0", "caption": caption})
    caps.append({"audiocap_id": "199", "youtube_id": "nowhere", "start_time": "0", "caption": "lost"})
    with open(ac / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(caps[0]))
        w.writeheader()
        w.writerows(caps)
    # VideoInstruct100K: JSON + videos; v2 has no sound track; v3 is missing.
    vi = d / "vi"
    (vi / "videos").mkdir(parents=True)
    ffmpeg(
        *lavfi("testsrc2=size=96x96:rate=5:duration=2"),
        *lavfi("sine=frequency=500:duration=2"),
        *H264,
        "-c:a",
        "aac",
        "-shortest",
        str(vi / "videos" / "v1.mp4"),
    )
    ffmpeg(
        *lavfi("color=c=red:size=96x96:rate=5:duration=2"),
        *H264,
        str(vi / "videos" / "v2.mp4"),
    )
    qa = [
        {"video_id": "v1", "q": "What is shown?", "a": "a test pattern with a tone"},
        {"video_id": "v1", "q": "What do you hear?", "a": "a tone"},
        {"video_id": "v2", "q": "What colour is it?", "a": "red"},
        {"video_id": "v3", "q": "Where is it?", "a": "gone"},
    ]
    (vi / "VideoInstruct100K.json").write_text(json.dumps(qa))
    # LAION-style (img2dataset): images with .txt captions; one image has no caption.
    la = d / "laion" / "00000"
    la.mkdir(parents=True)
    for i, colour in enumerate(("blue", "green")):
        ffmpeg("-f", "lavfi", "-i", f"color=c={colour}:size=64x64", "-frames:v", "1", str(la / f"00000000{i}.jpg"))
        (la / f"00000000{i}.txt").write_text(f"a {colour} square")
    ffmpeg("-f", "lavfi", "-i", "color=c=white:size=64x64", "-frames:v", "1", str(la / "000000009.jpg"))
    return d


@pytest.fixture(scope="module")
def manifests(sources, tiny_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifests")
    _run(
        "training.prepare",
        "commonvoice",
        "--tsv",
        str(sources / "cv" / "train.tsv"),
        "--out",
        str(out / "cv.jsonl"),
        "--workers",
        "2",
        home=tiny_home,
    )
    _run(
        "training.prepare",
        "audiocaps",
        "--csv",
        str(sources / "ac" / "train.csv"),
        "--audio-dir",
        str(sources / "ac" / "audio"),
        "--out",
        str(out / "ac.jsonl"),
        home=tiny_home,
    )
    _run(
        "training.prepare",
        "videoinstruct",
        "--json",
        str(sources / "vi" / "VideoInstruct100K.json"),
        "--videos",
        str(sources / "vi" / "videos"),
        "--out",
        str(out / "vi.jsonl"),
        home=tiny_home,
    )
    _run(
        "training.prepare",
        "laion",
        "--images",
        str(sources / "laion"),
        "--out",
        str(out / "laion.jsonl"),
        home=tiny_home,
    )
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_commonvoice_and_audiocaps_make_audio_samples_and_report_skips(manifests, sources, tiny_home):
    cv = _rows(manifests / "cv.jsonl")
    assert len(cv) == 4 and all(r["audio"].endswith(".mp3") for r in cv)
    assert {r["conversations"][1]["value"] for r in cv} == {
        "a low tone",
        "a high tone",
        "a middle tone",
        "a very high tone",
    }
    assert all(r["conversations"][0]["value"].startswith("<audio>\n") for r in cv)
    skipped = _rows(manifests / "cv.jsonl.skipped.jsonl")
    assert len(skipped) == 2 and any("missing" in s["reason"] for s in skipped)
    ac = _rows(manifests / "ac.jsonl")
    assert [r["conversations"][1]["value"] for r in sorted(ac, key=lambda r: r["id"])] == [
        "static noise hisses",
        "a steady hum",
    ]
    # Resumable: the same command again adds nothing and says so.
    again = _run(
        "training.prepare",
        "commonvoice",
        "--tsv",
        str(sources / "cv" / "train.tsv"),
        "--out",
        str(manifests / "cv.jsonl"),
        home=tiny_home,
    )
    assert "wrote 0 new samples" in again.stdout and len(_rows(manifests / "cv.jsonl")) == 4
    assert len(_rows(manifests / "cv.jsonl.skipped.jsonl")) == 2  # this run's skips, not doubled


def test_templates_vary_per_sample(manifests):
    prompts = {r["conversations"][0]["value"] for r in _rows(manifests / "cv.jsonl")}
    assert len(prompts) >= 2


def test_videoinstruct_extracts_16k_mono_wavs(manifests):
    from model.probe import probe
    from training.data import read_manifest

    stored = {r["id"]: r for r in _rows(manifests / "vi.jsonl")}
    assert stored["vi-v1-0"]["audio"] == "vi_audio/v1.wav"  # relative to the manifest's folder
    vi = {r["id"]: r for r in read_manifest(manifests / "vi.jsonl")}
    assert sorted(vi) == ["vi-v1-0", "vi-v1-1", "vi-v2-2"]
    wav = vi["vi-v1-0"]["audio"]
    assert wav.endswith("v1.wav") and probe(wav).audio_codec == "pcm_s16le"
    with open(wav, "rb") as f:
        header = f.read(44)
    assert int.from_bytes(header[22:24], "little") == 1 and int.from_bytes(header[24:28], "little") == 16000
    assert "audio" not in vi["vi-v2-2"]  # no sound track: a video-only sample
    assert any("v3" in s["item"] for s in _rows(manifests / "vi.jsonl.skipped.jsonl"))


def test_laion_folder_gives_image_caption_samples(manifests):
    rows = _rows(manifests / "laion.jsonl")
    assert sorted(r["conversations"][1]["value"] for r in rows) == ["a blue square", "a green square"]
    assert len(_rows(manifests / "laion.jsonl.skipped.jsonl")) == 1


def test_feature_cache_matches_encoding_on_the_fly(manifests, tiny, tiny_home, tmp_path):
    from training.data import Collator, ManifestDataset
    from training.features import FeatureStore
    from training.trainer import encoder_features

    cache = tmp_path / "features"
    out = _run(
        "training.features",
        "--manifest",
        str(manifests / "vi.jsonl"),
        "--model",
        "tiny",
        "--cache",
        str(cache),
        home=tiny_home,
    )
    assert "encoded 3 new files" in out.stdout  # v1.mp4, v2.mp4 and v1.wav
    store = FeatureStore(cache, tiny.config)
    raw = ManifestDataset([str(manifests / "vi.jsonl")], tiny.processor, ["audio", "video"])
    cached = ManifestDataset([str(manifests / "vi.jsonl")], tiny.processor, ["audio", "video"], store)
    collate = Collator(tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        a = tiny(**encoder_features(tiny, collate([raw[0], raw[2]]))).loss
        b = tiny(**encoder_features(tiny, collate([cached[0], cached[2]]))).loss
        c = tiny(**encoder_features(tiny, collate([cached[0], raw[2]]))).loss  # a batch mixing cached and raw
        d = tiny(**encoder_features(tiny, collate([raw[2], cached[0]]))).loss  # the other order
    assert cached[0].raw.video is None and cached[0].cached.video.shape == (829, tiny.config.vision_config.hidden_size)
    assert raw[0].cached.video is None and raw[0].raw.video.shape[1:] == (3, 384, 384)
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(a, c, atol=1e-4) and torch.allclose(a, d, atol=1e-4)
    again = _run(
        "training.prepare",
        "features",
        "--manifest",
        str(manifests / "vi.jsonl"),
        "--model",
        "tiny",
        "--cache",
        str(cache),
        home=tiny_home,
    )
    assert "encoded 0 new files" in again.stdout


def _state(model: AVChatModel, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def stage1(manifests, tiny_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    _run(
        "training.pretrain",
        "--model",
        "tiny",
        "--data",
        f"{manifests / 'cv.jsonl'},{manifests / 'ac.jsonl'}",
        "--output-dir",
        str(out),
        "--max-steps",
        "4",
        "--per-device-train-batch-size",
        "2",
        "--gradient-accumulation-steps",
        "1",
        "--logging-steps",
        "1",
        "--save-steps",
        "100",
        "--dataloader-num-workers",
        "0",
        "--report-to",
        "none",
        home=tiny_home,
    )
    return out


def test_stage1_changes_only_the_audio_projector(stage1, tiny):
    after = AVChatModel.from_pretrained(stage1 / "final")
    assert _changed(_state(tiny, "audio_projector"), _state(after, "audio_projector"))
    for prefix in ("vision_projector", "vision_tower", "audio_tower", "llm"):
        assert not _changed(_state(tiny, prefix), _state(after, prefix)), prefix
    assert (stage1 / "loss.png").stat().st_size > 1000
    assert (stage1 / "final" / "config.json").exists()


@pytest.fixture(scope="module")
def stage2(stage1, manifests, tiny_home, tmp_path_factory):
    runs = {}
    for name, modalities in (("av", "audio,video"), ("baseline", "video")):
        out = tmp_path_factory.mktemp(f"stage2-{name}")
        _run(
            "training.finetune",
            "--model",
            str(stage1 / "final"),
            "--data",
            str(manifests / "vi.jsonl"),
            "--output-dir",
            str(out),
            "--modalities",
            modalities,
            "--max-steps",
            "3",
            "--lora-r",
            "8",
            "--lora-alpha",
            "16",
            "--learning-rate",
            "1e-2",
            "--projector-lr",
            "1e-3",
            "--per-device-train-batch-size",
            "2",
            "--gradient-accumulation-steps",
            "1",
            "--logging-steps",
            "1",
            "--dataloader-num-workers",
            "0",
            "--report-to",
            "none",
            home=tiny_home,
        )
        runs[name] = out
    return runs


def test_stage2_changes_lora_and_both_projectors_never_the_encoders(stage1, stage2):
    before = AVChatModel.from_pretrained(stage1 / "final")
    after = AVChatModel.from_pretrained(stage2["av"] / "final")
    for prefix in ("audio_projector", "vision_projector", "llm"):  # llm: LoRA merged in
        assert _changed(_state(before, prefix), _state(after, prefix)), prefix
    for prefix in ("vision_tower", "audio_tower"):
        assert not _changed(_state(before, prefix), _state(after, prefix)), prefix
    assert after.config.modalities == ["audio", "video"] and not after.has_lora


def test_the_baseline_never_touches_audio(stage1, stage2):
    before = AVChatModel.from_pretrained(stage1 / "final")
    after = AVChatModel.from_pretrained(stage2["baseline"] / "final")
    assert not _changed(_state(before, "audio_projector"), _state(after, "audio_projector"))
    assert _changed(_state(before, "vision_projector"), _state(after, "vision_projector"))
    assert after.config.modalities == ["video"]


def test_loss_falls_when_overfitting_a_handful_of_samples(manifests, tiny_home, tmp_path):
    _run(
        "training.finetune",
        "--model",
        "tiny",
        "--data",
        str(manifests / "cv.jsonl"),
        "--output-dir",
        str(tmp_path),
        "--modalities",
        "audio",
        "--max-steps",
        "25",
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
        "--learning-rate",
        "3e-2",
        "--projector-lr",
        "1e-2",
        "--warmup-ratio",
        "0",
        "--lr-scheduler-type",
        "constant",
        "--per-device-train-batch-size",
        "4",
        "--gradient-accumulation-steps",
        "1",
        "--logging-steps",
        "1",
        "--dataloader-num-workers",
        "0",
        "--report-to",
        "none",
        "--export",
        "false",
        home=tiny_home,
    )
    losses = [h["loss"] for h in json.loads((tmp_path / "log_history.json").read_text()) if "loss" in h]
    assert len(losses) == 25
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses


def test_a_killed_run_resumes_and_finishes(manifests, tiny_home, tmp_path):
    args = [
        "--model",
        "tiny",
        "--data",
        str(manifests / "cv.jsonl"),
        "--output-dir",
        str(tmp_path),
        "--max-steps",
        "40",
        "--save-steps",
        "2",
        "--per-device-train-batch-size",
        "1",
        "--gradient-accumulation-steps",
        "1",
        "--logging-steps",
        "1",
        "--dataloader-num-workers",
        "0",
        "--report-to",
        "none",
    ]
    env = {**os.environ, "AVCHAT_HOME": str(tiny_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.pretrain", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "checkpoint-4" / "trainer_state.json").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "checkpoint-4").exists() and not (tmp_path / "final").exists()
    out = _run("training.pretrain", *args, home=tiny_home)
    assert "resuming from" in out.stdout
    state = json.loads((tmp_path / "log_history.json").read_text())
    assert max(h["step"] for h in state) == 40
    assert (tmp_path / "final" / "projectors.safetensors").exists()


def test_export_command_and_the_service_serves_the_result(stage2, tiny_home, tmp_path, media_dir):
    _run("training.export", "--run", str(stage2["av"]), "--output", str(tmp_path / "served"), home=tiny_home)
    exported = AVChatModel.from_pretrained(tmp_path / "served")
    final = AVChatModel.from_pretrained(stage2["av"] / "final")  # what the end of the run wrote
    for prefix in ("audio_projector", "vision_projector", "llm"):
        assert not _changed(_state(final, prefix), _state(exported, prefix)), prefix
    missing = _run(
        "training.export",
        "--run",
        str(tmp_path / "nothing"),
        "--output",
        str(tmp_path / "x"),
        check=False,
        home=tiny_home,
    )
    assert missing.returncode == 2 and "no trainer checkpoint" in missing.stderr
    srv = Server(
        {"AVCHAT_HOME": str(tiny_home), "AVCHAT_MODEL": str(tmp_path / "served"), "AVCHAT_ENGINE": "transformers"},
        tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        with open(media_dir / "vllama_dog_barking.mp4", "rb") as f:
            r = httpx.post(
                srv.url + "/v1/video/chat",
                files={"video": ("d.mp4", f)},
                data={"prompt": "What do you hear?", "max_tokens": "4"},
                timeout=120,
            )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 64
    finally:
        srv.stop()


def test_export_with_int8_weights_stores_the_trained_model_quantized(stage2, tiny_home, tmp_path):
    from model.quantization import Int8Linear

    out = tmp_path / "int8"
    _run("training.export", "--run", str(stage2["av"]), "--output", str(out), "--quantization", "int8", home=tiny_home)
    final = AVChatModel.from_pretrained(stage2["av"] / "final")
    exported = AVChatModel.from_pretrained(out)
    assert exported.config.quantization == "int8"
    for prefix in ("audio_projector", "vision_projector"):  # the trained projectors are kept as they are
        assert not _changed(_state(final, prefix), _state(exported, prefix)), prefix
    trained = dict(final.llm.named_modules())
    layers = [(name, m) for name, m in exported.llm.named_modules() if isinstance(m, Int8Linear)]
    assert layers
    for name, layer in layers:  # each weight within half an int8 step of the trained (LoRA-merged) one
        error = (layer.dequantized(torch.float32) - trained[name].weight.float()).abs()
        assert (error <= layer.weight_scale.float()[:, None] * 0.5 + 1e-6).all(), name
    refused = _run(
        "training.export",
        "--run",
        str(stage2["av"]),
        "--output",
        str(tmp_path / "x"),
        "--quantization",
        "int8",
        "--no-merge",
        check=False,
        home=tiny_home,
    )
    assert refused.returncode == 2 and "drop --no-merge" in refused.stderr


def test_export_from_a_trainer_checkpoint_merges_lora(manifests, stage1, tiny_home, tmp_path):
    run = tmp_path / "run"
    _run(
        "training.finetune",
        "--model",
        str(stage1 / "final"),
        "--data",
        str(manifests / "vi.jsonl"),
        "--output-dir",
        str(run),
        "--max-steps",
        "2",
        "--save-steps",
        "2",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--per-device-train-batch-size",
        "1",
        "--gradient-accumulation-steps",
        "1",
        "--dataloader-num-workers",
        "0",
        "--report-to",
        "none",
        "--export",
        "false",
        home=tiny_home,
    )
    assert not (run / "final").exists() and (run / "checkpoint-2" / "trainable.safetensors").exists()
    _run("training.export", "--run", str(run), "--output", str(tmp_path / "served"), home=tiny_home)
    model = AVChatModel.from_pretrained(tmp_path / "served")
    assert not model.has_lora and (tmp_path / "served" / "llm" / "model.safetensors").exists()


def test_invalid_arguments_list_every_problem(tiny_home, tmp_path):
    out = _run(
        "training.finetune",
        "--data",
        str(tmp_path / "nope.jsonl"),
        "--modalities",
        "smell",
        "--learning-rate",
        "-1",
        "--lora-dropout",
        "2",
        "--bf16",
        "maybe",
        check=False,
        home=tiny_home,
    )
    assert out.returncode == 2
    for fragment in ("nope.jsonl: no such file", "modalities", "learning_rate", "lora_dropout", "--bf16"):
        assert fragment in out.stderr, fragment
    assert "Traceback" not in out.stderr


def test_training_accepts_every_preset_the_model_has():
    from model.presets import PRESETS
    from training.config import PRESET_NAMES

    assert set(PRESET_NAMES) == {"demo", *PRESETS}


RECIPES = sorted((ROOT / "training" / "recipes").glob("*.yaml"))
# The fixture manifest that stands in for each data file the recipes name.
STAND_INS = {
    "commonvoice.jsonl": "cv.jsonl",
    "audiocaps.jsonl": "ac.jsonl",
    "videoinstruct.jsonl": "vi.jsonl",
    "laion.jsonl": "laion.jsonl",
}


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_shipped_recipe_runs_as_it_is(recipe, manifests, tiny_home, tmp_path):
    """Only the model, the data, the output folder and the step count are overridden."""
    import yaml

    values = yaml.safe_load(recipe.read_text())
    data = ",".join(str(manifests / STAND_INS[Path(d).name]) for d in values["data"])
    module = "training.finetune" if recipe.stem.startswith("finetune") else "training.pretrain"
    out = _run(
        module,
        "--config",
        str(recipe),
        "--model",
        "tiny",
        "--data",
        data,
        "--output-dir",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        home=tiny_home,
    )
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    assert max(h["step"] for h in history) == 2, out.stdout[-1000:]
    assert (tmp_path / "run" / "final" / "config.json").exists()


def _distinct_manifest(path: Path, sources: Path, n: int = 8) -> Path:
    """n samples with distinct answers about the CommonVoice fixture clips."""
    clips = sorted((sources / "cv" / "clips").glob("c*.mp3"))
    rows = [
        {
            "id": f"s{i}",
            "audio": str(clips[i % len(clips)]),
            "conversations": [
                {"from": "human", "value": "<audio>\nWhat do you hear?"},
                {"from": "gpt", "value": f"sample number {i}"},
            ],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.timeout(1200)  # its torchrun has 900 s
def test_torchrun_with_two_cpu_ranks_really_distributes(sources, tiny_home, tmp_path):
    data = _distinct_manifest(tmp_path / "eight.jsonl", sources)
    common = [
        "--model",
        "tiny",
        "--data",
        str(data),
        "--modalities",
        "audio",
        "--num-train-epochs",
        "1",
        "--learning-rate",
        "1e-8",
        "--projector-lr",
        "1e-8",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--gradient-accumulation-steps",
        "1",
        "--logging-steps",
        "1",
        "--dataloader-num-workers",
        "0",
        "--report-to",
        "none",
        "--warmup-ratio",
        "0",
    ]
    # A home where tiny is not built yet: both ranks want it at once, the first launch on a new machine.
    fresh_home = tmp_path / "home"
    env = {**os.environ, "AVCHAT_HOME": str(fresh_home), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "training.finetune",
            *common,
            "--per-device-train-batch-size",
            "2",
            "--output-dir",
            str(tmp_path / "ddp"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    # torchrun's own summary ends stderr; what went wrong is in the ranks' lines before it.
    rank_lines = [line for line in two.stderr.splitlines() if line.startswith("[rank")]
    assert two.returncode == 0, "\n".join(rank_lines[-60:]) + two.stderr[-1500:]
    built = list(fresh_home.iterdir())  # built once, completely, no half-built folder left
    assert len(built) == 1 and built[0].name.startswith("tiny-v") and list(built[0].rglob("*.safetensors"))
    _run(
        "training.finetune",
        *common,
        "--per-device-train-batch-size",
        "4",
        "--output-dir",
        str(tmp_path / "single"),
        home=tiny_home,
    )
    ranks = json.loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert ranks == {"world_size": 2, "samples_per_rank": [4, 4]}  # each rank half of the epoch
    assert json.loads((tmp_path / "single" / "ranks.json").read_text())["samples_per_rank"] == [8]
    assert two.stdout.count("wrote the checkpoint folder") == 1 and (tmp_path / "ddp" / "final").is_dir()
    losses = {}
    for name in ("ddp", "single"):
        history = json.loads((tmp_path / name / "log_history.json").read_text())
        losses[name] = [h["loss"] for h in history if "loss" in h]
    assert len(losses["ddp"]) == len(losses["single"]) == 2  # global batch 4: two steps, not four
    mean = {k: sum(v) / len(v) for k, v in losses.items()}
    assert abs(mean["ddp"] - mean["single"]) < 1e-3 * mean["single"], losses  # the same eight samples, once each


# -- data that survives the move to a cluster --------------------------------------------------------


def test_manifests_are_relative_to_a_data_root_and_move_with_it(sources, tiny_home, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(sources / "cv", root / "cv")
    _run(
        "training.prepare",
        "commonvoice",
        "--tsv",
        str(root / "cv" / "train.tsv"),
        "--out",
        str(root / "cv.jsonl"),
        home=tiny_home,
    )
    rows = _rows(root / "cv.jsonl")
    assert rows and all(r["audio"].startswith("cv/clips/") for r in rows)
    moved = tmp_path / "elsewhere" / "data"
    shutil.move(str(root), str(moved))  # another machine, another mount point
    before = {p.name for p in (moved / "cv" / "clips").iterdir()}
    _run(
        "training.pretrain",
        "--model",
        "tiny",
        "--data",
        str(moved / "cv.jsonl"),
        "--data-root",
        str(moved),
        "--output-dir",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
        "--per-device-train-batch-size",
        "2",
        "--dataloader-num-workers",
        "0",
        "--report-to",
        "none",
        home=tiny_home,
    )
    assert not (tmp_path / "run" / "skipped.jsonl").exists()
    assert {p.name for p in (moved / "cv" / "clips").iterdir()} == before  # the data folder is only read


def test_audiocaps_keeps_the_ten_seconds_from_start_time(tiny, tiny_home, tmp_path):
    from training.data import ManifestDataset

    audio = tmp_path / "ac" / "full"
    audio.mkdir(parents=True)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=30", "-ac", "1", str(audio / "yt0.wav"))
    csv_path = tmp_path / "ac" / "train.csv"
    csv_path.write_text("audiocap_id,youtube_id,start_time,caption\n1,yt0,12,a hum\n2,yt0,0,\n3,yt0,40,too late\n")
    _run(
        "training.prepare",
        "audiocaps",
        "--csv",
        str(csv_path),
        "--audio-dir",
        str(audio),
        "--out",
        str(tmp_path / "ac.jsonl"),
        home=tiny_home,
    )
    rows = _rows(tmp_path / "ac.jsonl")
    assert [(r["start"], r["end"]) for r in rows] == [(12.0, 22.0)]
    reasons = sorted(s["reason"] for s in _rows(tmp_path / "ac.jsonl.skipped.jsonl"))
    assert reasons[0] == "empty caption" and "past the end" in reasons[1]
    example = ManifestDataset([str(tmp_path / "ac.jsonl")], tiny.processor, ["audio"]).load(
        json.loads((tmp_path / "ac.jsonl").read_text().splitlines()[0]) | {"audio": str(audio / "yt0.wav")}
    )
    (mel,) = example.raw.audio  # one window (80, 3000): 10 s of sound, then the padding of the 30 s window
    assert mel[:, 900:1100].std() > mel[:, 1100:].std() * 2


def test_a_manifest_killed_mid_line_resumes(sources, tiny_home, tmp_path):
    out = tmp_path / "cv.jsonl"
    _run(
        "training.prepare",
        "commonvoice",
        "--tsv",
        str(sources / "cv" / "train.tsv"),
        "--out",
        str(out),
        "--limit",
        "2",
        home=tiny_home,
    )
    text = out.read_text()
    out.write_text(text + text.splitlines()[0][:25])  # a row cut off by a kill
    again = _run(
        "training.prepare", "commonvoice", "--tsv", str(sources / "cv" / "train.tsv"), "--out", str(out), home=tiny_home
    )
    assert "wrote 2 new samples" in again.stdout
    assert len(_rows(out)) == 4 and len({r["id"] for r in _rows(out)}) == 4


def test_skips_are_counted_across_dataloader_workers(manifests, tiny_home, tmp_path):
    data = tmp_path / "some_missing.jsonl"
    rows = _rows(manifests / "cv.jsonl")
    rows[0] = {**rows[0], "id": "gone", "audio": str(tmp_path / "gone.mp3")}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _run(
        "training.pretrain",
        "--model",
        "tiny",
        "--data",
        str(data),
        "--output-dir",
        str(tmp_path / "run"),
        "--max-steps",
        "4",
        "--per-device-train-batch-size",
        "2",
        "--dataloader-num-workers",
        "2",
        "--report-to",
        "none",
        home=tiny_home,
    )
    assert "skipped 1 unusable samples" in out.stdout
    assert [r["id"] for r in _rows(tmp_path / "run" / "skipped.jsonl")] == ["gone"]


def test_a_missing_vision_projector_file_is_a_listed_problem(manifests, tiny_home, tmp_path):
    out = _run(
        "training.finetune",
        "--model",
        "tiny",
        "--data",
        str(manifests / "vi.jsonl"),
        "--vision-projector",
        str(tmp_path / "mm_projector.bin"),
        check=False,
        home=tiny_home,
    )
    assert out.returncode == 2 and "mm_projector.bin: no such file" in out.stderr and "Traceback" not in out.stderr
    out = _run(
        "training.pretrain",
        "--model",
        "tiny",
        "--data",
        str(manifests / "cv.jsonl"),
        "--vision-projector",
        "BAAI/bunny-pretrain-phi-2-siglip",
        check=False,
        home=tiny_home,
    )
    assert out.returncode == 2 and "stage 1 does not load a projector" in out.stderr


@pytest.mark.parametrize(
    "module",
    [
        "training.pretrain",
        "training.finetune",
        "training.prepare",
        "training.features",
        "training.evaluate",
        "training.export",
        "training.download",
    ],
)
def test_help_and_argument_errors_answer_without_importing_torch(module):
    for args in (["--help"], ["--no-such-flag"]):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", module, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
        assert out.returncode in (0, 2) and not {"torch", "transformers"} & imported, (module, args)


def test_seeded_deterministic_runs_give_the_same_numbers(manifests, tiny_home, tmp_path):
    losses = []
    for name in ("a", "b"):
        _run(
            "training.finetune",
            "--model",
            "tiny",
            "--data",
            str(manifests / "vi.jsonl"),
            "--output-dir",
            str(tmp_path / name),
            "--max-steps",
            "4",
            "--seed",
            "3",
            "--deterministic",
            "true",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--per-device-train-batch-size",
            "2",
            "--logging-steps",
            "1",
            "--dataloader-num-workers",
            "2",
            "--report-to",
            "none",
            "--export",
            "false",
            home=tiny_home,
        )
        history = json.loads((tmp_path / name / "log_history.json").read_text())
        losses.append([h["loss"] for h in history if "loss" in h])
    assert losses[0] == losses[1] and len(losses[0]) == 4


# -- downloads ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_copies(sources, tmp_path_factory):
    """Folders laid out as the hub repos are."""
    import tarfile

    d = tmp_path_factory.mktemp("hub")
    (d / "vi").mkdir()
    shutil.copy(sources / "vi" / "VideoInstruct100K.json", d / "vi" / "VideoInstruct100K.json")
    cv = d / "cv"
    (cv / "transcript" / "en").mkdir(parents=True)
    (cv / "audio" / "en" / "train").mkdir(parents=True)
    shutil.copy(sources / "cv" / "train.tsv", cv / "transcript" / "en" / "train.tsv")
    with tarfile.open(cv / "audio" / "en" / "train" / "en_train_0.tar", "w") as tar:
        for clip in sorted((sources / "cv" / "clips").glob("c*.mp3")):
            tar.add(clip, arcname=f"en_train_0/{clip.name}")
        tar.add(sources / "cv" / "clips" / "c0.mp3", arcname="../../escape.mp3")  # a hostile member name
    (d / "bunny").mkdir()
    torch.save({"model.mm_projector.0.weight": torch.zeros(2, 2)}, d / "bunny" / "mm_projector.bin")
    (d / "bunny" / "config.json").write_text("{}")
    return d


def test_downloads_from_a_folder_laid_out_as_the_hub(hub_copies, tiny_home, tmp_path):
    out = _run(
        "training.download",
        "commonvoice",
        "--from",
        str(hub_copies / "cv"),
        "--to",
        str(tmp_path / "cv"),
        home=tiny_home,
    )
    assert "next: python -m training.prepare commonvoice" in out.stdout
    clips = {p.name for p in (tmp_path / "cv" / "en" / "clips").iterdir()}
    assert clips == {"c0.mp3", "c1.mp3", "c2.mp3", "c3.mp3", "escape.mp3"}
    assert not (tmp_path / "escape.mp3").exists() and not (tmp_path.parent / "escape.mp3").exists()
    prepared = _run(
        "training.prepare",
        "commonvoice",
        "--tsv",
        str(tmp_path / "cv" / "en" / "train.tsv"),
        "--out",
        str(tmp_path / "cv.jsonl"),
        home=tiny_home,
    )
    assert "wrote 4 new samples" in prepared.stdout
    again = _run(
        "training.download",
        "commonvoice",
        "--from",
        str(hub_copies / "cv"),
        "--to",
        str(tmp_path / "cv"),
        home=tiny_home,
    )
    assert again.returncode == 0  # resumable: nothing to copy twice
    _run(
        "training.download",
        "videoinstruct",
        "--from",
        str(hub_copies / "vi"),
        "--to",
        str(tmp_path / "vi"),
        home=tiny_home,
    )
    assert json.loads((tmp_path / "vi" / "VideoInstruct100K.json").read_text())[0]["video_id"] == "v1"
    _run(
        "training.download",
        "bunny-projector",
        "--from",
        str(hub_copies / "bunny"),
        "--to",
        str(tmp_path / "b"),
        home=tiny_home,
    )
    assert (tmp_path / "b" / "mm_projector.bin").exists()
    empty = _run(
        "training.download",
        "videoinstruct",
        "--from",
        str(tmp_path / "b"),
        "--to",
        str(tmp_path / "x"),
        check=False,
        home=tiny_home,
    )
    assert empty.returncode != 0 and "has none of" in empty.stderr and "Traceback" not in empty.stderr
