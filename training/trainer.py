"""One training loop for both stages, on Hugging Face's ``Trainer`` (so torchrun, DeepSpeed
ZeRO-2/3, bf16, gradient checkpointing, resume, TensorBoard and progress bars come from it).

``setup()`` builds the model for a stage and freezes what the stage keeps fixed; ``fit()`` runs
the Trainer, resuming from the newest checkpoint; the end of a run writes ``loss.png`` and, when
asked, the served checkpoint folder (``final/``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from model import AVChatModel

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
    model = AVChatModel.from_pretrained(cfg.model)
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
    return model


class AVTrainer(Trainer):
    """Trainer that (1) gives the projectors their own learning rate and (2) checkpoints only
    the trainable weights: the frozen encoders and LLM never change, so saving them every
    ``save_steps`` would cost gigabytes for nothing."""

    def __init__(self, *args, projector_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.projector_lr = projector_lr

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
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate,
                                               weight_decay=self.args.weight_decay)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, os.path.join(output_dir, TRAINABLE_FILE))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model or self.model
        state = load_file(os.path.join(resume_from_checkpoint, TRAINABLE_FILE))
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"checkpoint {resume_from_checkpoint} does not fit this model: {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=False)


def fit(cfg: TrainConfig, stage: str) -> Path:
    """Trains, resuming when a checkpoint exists; returns the run folder."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(json.dumps(vars(cfg), indent=1, default=str))
    model = setup(cfg, stage)
    store = None
    if cfg.feature_cache:
        from .features import FeatureStore

        store = FeatureStore(cfg.feature_cache, model.config)
    skips = SkipLog(out / "skipped.jsonl")
    dataset = ManifestDataset(cfg.data, model.processor, model.config.modalities, store, skips, cfg.max_length)
    args = TrainingArguments(
        output_dir=str(out), num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of all steps
        lr_scheduler_type=cfg.lr_scheduler_type, weight_decay=cfg.weight_decay,
        bf16=cfg.bf16, gradient_checkpointing=cfg.gradient_checkpointing, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=cfg.seed,
        dataloader_num_workers=cfg.dataloader_num_workers, deepspeed=cfg.deepspeed,
        report_to=[] if cfg.report_to in ("none", "") else [cfg.report_to],
        remove_unused_columns=False, disable_tqdm=False,
        # Without a GPU, say so: bf16 then runs on the CPU, and torchrun's ranks form a real (gloo) DDP group.
        use_cpu=not torch.cuda.is_available())
    trainer = AVTrainer(model=model, args=args, train_dataset=dataset, data_collator=Collator(model.processor),
                        projector_lr=cfg.projector_lr if stage == "finetune" else None)
    last = get_last_checkpoint(str(out)) if cfg.resume and out.exists() else None
    if last:
        log.warning("resuming from %s", last)
        print(f"resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    history = trainer.state.log_history
    (out / "log_history.json").write_text(json.dumps(history, indent=1))
    plot_loss(history, out / "loss.png", f"{stage} ({', '.join(model.config.modalities)})")
    if skips.count:
        print(f"skipped {skips.count} unusable samples (see {out / 'skipped.jsonl'})")
    if trainer.is_world_process_zero():
        final = out / "final"
        if stage == "pretrain" or cfg.export:
            model.save_pretrained(final, merge=True)
            print(f"wrote the checkpoint folder {final}")
    return out


def plot_loss(history: list[dict], path: Path, title: str) -> None:
    steps = [h["step"] for h in history if "loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    if not steps:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker="o" if len(steps) < 30 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
