"""Export a trained run as the checkpoint folder the service loads (LoRA merged into llm/).

    python -m training.export --run runs/stage2 --output checkpoints/latest
    python -m training.export --run runs/stage2/checkpoint-500 --output checkpoints/step500
    python -m training.export --run runs/stage2 --output checkpoints/latest-int8 --quantization int8

``--run`` is a run folder (its newest trainer checkpoint is used) or one trainer checkpoint;
the run's ``run_config.json`` says which model and stage it started from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import TrainConfig


def export(run: str | os.PathLike, output: str | os.PathLike, merge: bool = True, quantization: str = "none") -> Path:
    """Writes the checkpoint folder; ``quantization="int8"`` merges LoRA, then stores the
    encoders and the LLM as int8 weights (:mod:`model.quantization`), which load as stored."""
    from safetensors.torch import load_file
    from transformers.trainer_utils import get_last_checkpoint

    from .trainer import TRAINABLE_FILE, setup

    run = Path(run)
    ckpt = run if (run / TRAINABLE_FILE).exists() else None
    if ckpt is None:
        last = get_last_checkpoint(str(run)) if run.is_dir() else None
        if last is None:
            raise FileNotFoundError(f"{run}: no trainer checkpoint (checkpoint-*/{TRAINABLE_FILE}) found")
        ckpt = Path(last)
    config_file = ckpt.parent / "run_config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file}: missing; export needs the run's configuration")
    values = json.loads(config_file.read_text())
    if values.get("stage") not in ("pretrain", "finetune"):
        raise ValueError(
            f"{config_file} does not say which stage the run was (a run from an older release); "
            'add "stage": "pretrain" or "finetune" to it'
        )
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__})
    model = setup(cfg, values["stage"])
    state = load_file(ckpt / TRAINABLE_FILE)
    missing = set(state) - {n for n, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"{ckpt} does not fit the model of its run: {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    if quantization == "int8":
        from model.quantization import quantize_int8

        if not merge:
            raise ValueError("--quantization int8 stores the LLM with its LoRA merged; drop --no-merge")
        if model.has_lora:
            model.merge_lora()
        quantize_int8(model)
    model.save_pretrained(output, merge=merge)
    return Path(output)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder or one of its checkpoint-N folders")
    p.add_argument("--output", required=True, help="the checkpoint folder to write")
    p.add_argument("--no-merge", action="store_true", help="keep the LoRA adapter separate (adapter/)")
    p.add_argument(
        "--quantization",
        choices=["none", "int8"],
        default="none",
        help="int8: store the encoders and the LLM as int8 weights, for CPUs (half of bfloat16's size)",
    )
    args = p.parse_args(argv)
    try:
        out = export(args.run, args.output, merge=not args.no_merge, quantization=args.quantization)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
