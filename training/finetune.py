"""Stage 2: LoRA on every linear layer of the LLM plus both projectors (their own learning
rate) on audio-visual QA, starting from stage 1's output; ``--modalities video`` trains the
vision-only baseline. The end of the run writes the served checkpoint folder (``final/``).

    python -m training.finetune --config training/recipes/finetune.yaml --model runs/stage1/final \\
        --data data/vi.jsonl --output-dir runs/stage2
"""

from __future__ import annotations

import sys

from .config import parse_config


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(sys.argv[1:] if argv is None else argv, stage="finetune")
    from .trainer import fit  # torch and transformers load only once the arguments are valid

    fit(cfg, "finetune")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
