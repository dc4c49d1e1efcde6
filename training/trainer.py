"""One training loop for both stages, on Hugging Face's ``Trainer`` (so torchrun, ``accelerate
launch`` and ``deepspeed`` launches, DeepSpeed ZeRO-2/3, bf16, gradient checkpointing, resume,
TensorBoard and progress bars come from it).

``setup()`` builds the model for a stage and freezes what the stage keeps fixed; ``fit()`` runs
the Trainer, resuming from the newest checkpoint. The trainer runs the frozen encoders on the
raw media of a batch (``model.pipeline.encode``) and feeds the model encoder features, whether
they came from the feature cache or not. In a distributed run every rank trains on its share of
the data, and only the first writes the run's files: ``run_config.json`` (with the stage),
``log_history.json``, ``loss.png``, ``skipped.jsonl``, ``ranks.json`` (how many samples each rank
trained on) and the served checkpoint ``final/``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from model import AVChatModel, pipeline

from . import charts, jsonl
from .config import TrainConfig
from .data import Collator, ManifestDataset, SkipLog

log = logging.getLogger("avchat.training")
TRAINABLE_FILE = "trainable.safetensors"


def setup(cfg: TrainConfig, stage: str) -> AVChatModel:
    """The model with exactly the stage's parameters trainable.

    * pretrain, branch audio: the audio projector only;
    * pretrain, branch vision: the vision projector only;
    * finetune: LoRA on every linear layer of the LLM + both projectors (+ the vision projector
      only with modalities video: the baseline never touches audio).
    """
    model = AVChatModel.from_pretrained(cfg.model, dtype=getattr(torch, cfg.frozen_dtype))
    if cfg.max_audio_windows:
        model.config.max_audio_windows = cfg.max_audio_windows  # saved with the checkpoint: served so too
    model.requires_grad_(False)
    if stage == "pretrain":
        projector = model.audio_projector if cfg.branch == "audio" else model.vision_projector
        projector.requires_grad_(True)
        model.config.modalities = [cfg.branch if cfg.branch == "audio" else "video"]
    else:
        if cfg.vision_projector:
            model.load_bunny_projector(cfg.vision_projector)
        if model.has_lora:  # a checkpoint saved with an adapter: fold it in before adding ours
            model.merge_lora()
        model.add_lora(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
        for name, p in model.llm.named_parameters():
            norm_or_bias = "layernorm" in name or "layer_norm" in name or name.endswith(".bias")
            p.requires_grad_("lora_" in name or (cfg.train_norms and norm_or_bias and "lora_" not in name))
        model.vision_projector.requires_grad_("video" in cfg.modalities)
        model.audio_projector.requires_grad_("audio" in cfg.modalities)
        model.config.modalities = list(cfg.modalities)
    model.freeze_encoders()
    # What trains keeps float32 weights (and so float32 optimizer state) over bf16 frozen ones;
    # peft already makes LoRA's adapters float32 (autocast_adapter_dtype).
    for part in (model.vision_projector, model.audio_projector):
        if any(p.requires_grad for p in part.parameters()):
            part.float()
    return model


def encoder_features(model: AVChatModel, batch: dict) -> dict:
    """A collated batch -> model inputs: the raw media encoded (frozen, no gradients) and put
    back in batch order among the cached features."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels") if k in batch}
    raw_video, raw_audio = batch.get("video_raw", []), batch.get("audio_raw", [])
    n = max(len(raw_video), len(raw_audio))
    encoded = (
        pipeline.encode(
            model,
            [
                pipeline.MediaTensors(
                    raw_video[i] if i < len(raw_video) else None, raw_audio[i] if i < len(raw_audio) else None
                )
                for i in range(n)
            ],
        )
        if n
        else []
    )
    for kind in ("video", "audio"):
        if f"{kind}_is_cached" not in batch:
            continue
        flags = batch[f"{kind}_is_cached"]
        fresh = [getattr(e, kind) for e in encoded if getattr(e, kind) is not None]
        cached = batch.get(f"{kind}_cached")
        parts, c, r = [], 0, 0
        for is_cached in flags.tolist():
            if is_cached:
                parts.append(cached[c])
                c += 1
            else:
                parts.append(fresh[r])
                r += 1
        parts = [p.to(parts[0].device) for p in parts]
        # Video: (B_v, T + P, Cv); audio: each sample's windows one after another (their counts differ).
        inputs[f"{kind}_features"] = torch.stack(parts) if kind == "video" else torch.cat(parts)
    return inputs


class AVTrainer(Trainer):
    """Trainer that (1) encodes raw media with the frozen encoders before the forward pass,
    (2) gives the projectors their own learning rate and (3) checkpoints only the trainable
    weights: the frozen encoders and LLM never change, so saving them every ``save_steps``
    would cost gigabytes for nothing."""

    def __init__(self, *args, projector_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.projector_lr = projector_lr
        self.samples_seen = 0  # by this rank: a distributed run's ranks each see their share

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.samples_seen += int(inputs["input_ids"].shape[0])
        inputs = encoder_features(self.accelerator.unwrap_model(model), inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = model or self.model
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            projectors = [p for n, p in named if "projector" in n]
            others = [p for n, p in named if "projector" not in n]
            groups = []
            if others:
                groups.append({"params": others, "lr": self.args.learning_rate})
            if projectors:
                groups.append({"params": projectors, "lr": self.projector_lr or self.args.learning_rate})
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        # Under DeepSpeed ZeRO-3 the Trainer hands over the gathered state dict; parameters here are shards.
        source = state_dict if state_dict is not None else dict(model.named_parameters())
        trainable = {n: source[n].detach().contiguous().cpu() for n in names if n in source}
        save_file(trainable, os.path.join(output_dir, TRAINABLE_FILE))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model or self.model
        state = load_file(os.path.join(resume_from_checkpoint, TRAINABLE_FILE))
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"checkpoint {resume_from_checkpoint} does not fit this model: {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=False)


def training_arguments(cfg: TrainConfig, out: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of all steps
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        full_determinism=cfg.deterministic,
        dataloader_num_workers=cfg.dataloader_num_workers,
        deepspeed=cfg.deepspeed,
        report_to=[] if cfg.report_to in ("none", "") else [cfg.report_to],
        remove_unused_columns=False,
        disable_tqdm=False,
        # Without a GPU, say so: bf16 then runs on the CPU, and torchrun's ranks form a real (gloo) DDP group.
        use_cpu=not torch.cuda.is_available(),
    )


def fit(cfg: TrainConfig, stage: str) -> Path:
    """Trains, resuming when a checkpoint exists; returns the run folder."""
    out = Path(cfg.output_dir)
    args = training_arguments(cfg, out)  # sets up the process group of a distributed launch
    main = args.process_index == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps({**vars(cfg), "stage": stage}, indent=1, default=str))
    # Seed before the model is built: LoRA's A matrices are drawn when the adapter is added.
    set_seed(cfg.seed, deterministic=cfg.deterministic)
    # Local rank 0 loads first: a preset it builds on first use (tiny, phi2-shape) is complete before
    # the other ranks look for it (transformers writes weights from rank 0 only).
    with args.main_process_first(desc="loading the model"):
        model = setup(cfg, stage)
    store = None
    if cfg.feature_cache:
        from .features import FeatureStore

        store = FeatureStore(cfg.feature_cache, model.config)
    skips = SkipLog(out / ".skipped" / f"{socket.gethostname()}-{os.getpid()}.jsonl")
    dataset = ManifestDataset(
        cfg.data, model.processor, model.config.modalities, store, skips, cfg.max_length, cfg.data_root
    )
    trainer = AVTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=Collator(model.tokenizer.pad_token_id),
        projector_lr=cfg.projector_lr if stage == "finetune" else None,
    )
    last = get_last_checkpoint(str(out)) if cfg.resume and out.exists() else None
    if last and main:
        log.warning("resuming from %s", last)
        print(f"resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    seen = _gather(trainer.samples_seen, args.world_size)
    if trainer.is_world_process_zero():
        (out / "ranks.json").write_text(json.dumps({"world_size": args.world_size, "samples_per_rank": seen}))
        history = trainer.state.log_history
        (out / "log_history.json").write_text(json.dumps(history, indent=1))
        steps = [h["step"] for h in history if "loss" in h]
        charts.line(
            out / "loss.png",
            {"loss": (steps, [h["loss"] for h in history if "loss" in h])},
            "optimizer step",
            "training loss",
            f"{stage} ({', '.join(model.config.modalities)})",
        )
        skipped = merge_skips(out)
        if skipped:
            print(f"skipped {skipped} unusable samples (see {out / 'skipped.jsonl'})")
        if (stage == "pretrain" or cfg.export) and _zero3():
            print(
                f"DeepSpeed ZeRO-3 keeps the weights sharded: write the served folder with "
                f"python -m training.export --run {out} --output {out / 'final'}"
            )
        elif stage == "pretrain" or cfg.export:
            model.save_pretrained(out / "final", merge=True)
            print(f"wrote the checkpoint folder {out / 'final'}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every rank waits for rank 0's files (torchrun's exit means they are written), then the
        # group is taken down in order rather than by whichever process exits first.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return out


def _gather(value, world_size: int) -> list:
    """``value`` from every rank, in rank order."""
    if world_size == 1:
        return [value]
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def _zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def merge_skips(out: Path) -> int:
    """Gathers what every rank and dataloader worker skipped into ``skipped.jsonl`` (one line per
    sample, however many times it was met, this run or a resumed one); returns the count."""
    seen: dict[str, dict] = {}
    for part in sorted((out / ".skipped").glob("*.jsonl")):
        for row in jsonl.read(part):
            seen.setdefault(str(row.get("id")), row)
    if seen:
        jsonl.write(out / "skipped.jsonl", seen.values())
    return len(seen)
