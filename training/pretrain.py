"""Stage 1: pretrain the audio projector (encoders, LLM and vision projector frozen) on
transcription + captioning data; ``--branch vision`` pretrains the vision projector on image
captions instead.

    python -m training.pretrain --config training/recipes/pretrain.yaml --data data/cv.jsonl,data/ac.jsonl
"""

from __future__ import annotations

import sys

from .config import parse_config


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(
        sys.argv[1:] if argv is None else argv, stage="pretrain", defaults={"learning_rate": 5e-4, "projector_lr": None}
    )
    from .trainer import fit  # torch and transformers load only once the arguments are valid

    fit(cfg, "pretrain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
