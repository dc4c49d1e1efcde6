"""Run configuration: one dataclass for both stages; a YAML recipe fills it, the command line
overrides any field, and validation lists every problem at once.

    python -m training.finetune --config training/recipes/finetune.yaml --model runs/stage1 --lora-r 64
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field

import yaml

from model import modalities

# The presets model.presets resolves (tests/test_training.py keeps the two lists equal; importing
# model.presets here would load transformers before the arguments are even checked).
PRESET_NAMES = ("tiny", "demo", "phi2-shape", "phi2")


@dataclass
class TrainConfig:
    model: str = "tiny"
    """Where training starts: a checkpoint folder (stage 2: stage 1's output) or a preset."""
    data: list[str] = field(default_factory=list)
    """Manifests (JSON lines, LLaVA conversation format) to train on."""
    data_root: str | None = None
    """Where the manifests' relative media paths start (default: each manifest's own folder)."""
    output_dir: str = "runs/avchat"
    """Run folder: trainer checkpoints, TensorBoard logs, loss.png, and the exported checkpoint."""
    feature_cache: str | None = None
    """A feature cache folder from `training.prepare features`; media missing there is encoded on the fly."""
    max_audio_windows: int | None = None
    """30 s audio windows the model takes, which the checkpoint then declares (default: the starting
    checkpoint's; 1 is the paper's one window). Samples carry as many as their audio needs."""
    modalities: list[str] = field(default_factory=lambda: ["audio", "video"])
    """Branches this run uses; `video` trains the paper's vision-only baseline."""
    branch: str = "audio"
    """Stage 1 only: which projector learns (`audio` on speech/sound data, `vision` on image captions)."""
    vision_projector: str | None = None
    """Stage 2: import this Bunny projector (mm_projector.bin, or a hub repo) before training."""

    lora_r: int = 128
    """LoRA rank on every linear layer of the LLM (stage 2)."""
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    train_norms: bool = False
    """Stage 2: also train the LLM's LayerNorms and biases (not in the paper's recipe; a small LLM with
    random weights, as in the synthetic experiment, does not learn through LoRA alone)."""
    learning_rate: float = 2e-4
    """Peak learning rate of the LoRA weights (stage 2) or of the projector (stage 1)."""
    projector_lr: float | None = 2e-5
    """Stage 2: the projectors' own learning rate (Bunny: 2e-5); None uses learning_rate."""
    num_train_epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 2
    """Global batch = per-device batch x accumulation x GPUs (Bunny: 128)."""
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    bf16: bool = False
    frozen_dtype: str = "float32"
    """The frozen weights' dtype (encoders, LLM): bfloat16 halves their memory (Phi-2 at real size:
    5.6 GB, not 11); what trains (projectors, LoRA) stays float32 either way."""
    gradient_checkpointing: bool = False
    max_length: int = 2048
    """Samples longer than this (media tokens included) are skipped."""
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    seed: int = 42
    deterministic: bool = False
    """Deterministic algorithms and seeded workers (transformers' full_determinism): same seed, same numbers."""
    dataloader_num_workers: int = 2
    deepspeed: str | None = None
    """A DeepSpeed config (e.g. ZeRO-2/3 JSON) for multi-GPU runs under torchrun/deepspeed."""
    report_to: str = "tensorboard"
    resume: bool = True
    """Resume from the newest checkpoint in output_dir when there is one."""
    export: bool = True
    """At the end, write the served checkpoint folder to output_dir/final (LoRA merged)."""


def _parse_value(tp, text: str):
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        if text.lower() in ("none", "null"):
            return None
        return _parse_value(args[0], text)
    if origin is list:
        return [_parse_value(args[0], t.strip()) for t in text.split(",") if t.strip()]
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    return tp(text)


def parse_config(argv: list[str] | None, *, stage: str, defaults: dict | None = None) -> TrainConfig:
    """--config YAML, then --field value overrides (every field; lists comma-separated)."""
    hints = typing.get_type_hints(TrainConfig)
    docs = _field_docs()
    parser = argparse.ArgumentParser(
        prog=f"python -m training.{stage}", description=f"Stage {'1' if stage == 'pretrain' else '2'} training."
    )
    parser.add_argument("--config", help="a YAML recipe (training/recipes/*.yaml); flags override it")
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar="VALUE", help=docs.get(f.name, "")
        )
    ns = parser.parse_args(argv)
    values: dict = dict(defaults or {})
    problems: list[str] = []
    if ns.config:
        if not os.path.exists(ns.config):
            problems.append(f"--config {ns.config}: no such file")
        else:
            with open(ns.config, encoding="utf-8") as f:
                recipe = yaml.safe_load(f) or {}
            unknown = set(recipe) - set(hints)
            problems += [f"{ns.config}: unknown field {k!r}" for k in sorted(unknown)]
            values.update({k: v for k, v in recipe.items() if k in hints})
    for name, tp in hints.items():
        text = getattr(ns, name)
        if text is None:
            continue
        try:
            values[name] = _parse_value(tp, text)
        except ValueError as exc:
            problems.append(f"--{name.replace('_', '-')}: {exc}")
    cfg = TrainConfig(**values)
    problems += validate(cfg, stage)
    if problems:
        parser.exit(2, "error: the run is not valid:\n" + "\n".join(f"  - {p}" for p in problems) + "\n")
    return cfg


def validate(cfg: TrainConfig, stage: str) -> list[str]:
    problems = []
    if not cfg.data:
        problems.append("data: give at least one manifest (--data a.jsonl,b.jsonl)")
    for m in cfg.data:
        if not os.path.exists(m):
            problems.append(f"data: {m}: no such file")
    try:
        modalities.check(cfg.modalities, "modalities")
    except modalities.UnknownModality as exc:
        problems.append(str(exc))
    if stage == "pretrain" and cfg.branch not in ("audio", "vision"):
        problems.append(f"branch: audio or vision, not {cfg.branch!r}")
    if cfg.max_audio_windows is not None and cfg.max_audio_windows < 1:
        problems.append(f"max_audio_windows: at least 1, got {cfg.max_audio_windows}")
    for name in (
        "learning_rate",
        "num_train_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "lora_r",
        "lora_alpha",
        "max_length",
        "logging_steps",
        "save_steps",
    ):
        if getattr(cfg, name) <= 0:
            problems.append(f"{name}: must be positive, got {getattr(cfg, name)}")
    if not 0 <= cfg.lora_dropout < 1:
        problems.append(f"lora_dropout: must be in [0, 1), got {cfg.lora_dropout}")
    if not 0 <= cfg.warmup_ratio < 1:
        problems.append(f"warmup_ratio: must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.projector_lr is not None and cfg.projector_lr <= 0:
        problems.append(f"projector_lr: must be positive, got {cfg.projector_lr}")
    if cfg.frozen_dtype not in ("float32", "bfloat16", "float16"):
        problems.append(f"frozen_dtype: float32, bfloat16 or float16, not {cfg.frozen_dtype!r}")
    if cfg.feature_cache and not os.path.isdir(cfg.feature_cache):
        problems.append(f"feature_cache: {cfg.feature_cache}: no such folder")
    if cfg.deepspeed and not os.path.exists(cfg.deepspeed):
        problems.append(f"deepspeed: {cfg.deepspeed}: no such file")
    if cfg.data_root and not os.path.isdir(cfg.data_root):
        problems.append(f"data_root: {cfg.data_root}: no such folder")
    if cfg.vision_projector:
        if stage == "pretrain":
            problems.append("vision_projector: stage 1 does not load a projector; pass it to stage 2 (finetune)")
        elif _looks_like_path(cfg.vision_projector) and not os.path.exists(cfg.vision_projector):
            problems.append(f"vision_projector: {cfg.vision_projector}: no such file")
    if not (os.path.isdir(cfg.model) or cfg.model in PRESET_NAMES):
        problems.append(f"model: {cfg.model}: neither a checkpoint folder nor a preset ({', '.join(PRESET_NAMES)})")
    return problems


def _looks_like_path(text: str) -> bool:
    """A local file rather than a hub repo id (``owner/name``)."""
    return text.startswith((".", "/", "~")) or text.endswith((".bin", ".safetensors", ".pt")) or text.count("/") > 1


def _field_docs() -> dict[str, str]:
    """Attribute docstrings (the string after each field) become --help text."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(TrainConfig))
    docs, body = {}, tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


if __name__ == "__main__":  # pragma: no cover
    print(parse_config(sys.argv[1:], stage="finetune"))
