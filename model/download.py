"""Fetches the paper's components from the Hugging Face hub and writes a ready ``phi2``
checkpoint folder (the real SigLIP, Whisper, Phi-2 and Bunny's vision projector; the audio
projector untrained).

    python -m model download --to checkpoints/phi2     # then AVCHAT_MODEL=checkpoints/phi2
"""

from __future__ import annotations

import os
from pathlib import Path

from .hub import PATTERNS, PHI2_REPOS


def download(to: str | os.PathLike) -> Path:
    """Fetches the four components (progress bars; an interrupted download resumes) and writes a
    checkpoint folder the service and the command line load as they are."""
    import torch
    from huggingface_hub import snapshot_download
    from transformers import AutoTokenizer

    from . import bunny
    from .modeling import mlp2x_gelu
    from .presets import phi2_shape_config
    from .processor import add_media_tokens

    to = Path(to)
    token = os.environ.get("HF_TOKEN")
    for folder, repo in PHI2_REPOS.items():
        print(f"{repo} -> {to / folder}", flush=True)
        snapshot_download(repo, local_dir=str(to / folder), allow_patterns=PATTERNS, token=token)
    config = phi2_shape_config()  # phi2's geometry with every component in this folder
    tokenizer = AutoTokenizer.from_pretrained(to / "llm")
    add_media_tokens(tokenizer)
    tokenizer.save_pretrained(to)
    tokenizer.save_pretrained(to / "llm")
    torch.manual_seed(0)  # the audio projector starts untrained (stage 1 trains it)
    audio = mlp2x_gelu(config.audio_config.d_model, config.hidden_size)
    vision = bunny.projector_state(bunny.read_state(str(to / "projector" / "mm_projector.bin"), ""))
    bunny.save_projectors(to, vision, audio.state_dict())
    config.save_pretrained(to)
    return to
