"""The real weights on the Hugging Face hub: whether they can be had (answered in seconds, not
after a minute of retries), and the download that writes a ready ``phi2`` checkpoint folder.

    python -m model download --to checkpoints/phi2     # then AVCHAT_MODEL=checkpoints/phi2
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

# The paper's components and the files of each that the model reads.
PHI2_REPOS = {
    "vision": "google/siglip-so400m-patch14-384",
    "audio": "openai/whisper-small",
    "llm": "microsoft/phi-2",
    "projector": "BAAI/bunny-pretrain-phi-2-siglip",
}
PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "mm_projector.bin"]


class WeightsUnavailable(OSError):
    """The hub cannot be reached and the weights are not in the local cache."""


def _cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return isinstance(found, str)


def _reachable(timeout: float = 3.0) -> bool:
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_available(repos: list[str]) -> None:
    """Raises ``WeightsUnavailable`` at once (with what to do) when the weights cannot be had."""
    missing = [r for r in repos if not _cached(r)]
    if not missing:
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline or not _reachable():
        raise WeightsUnavailable(
            f"the phi2 preset needs {', '.join(missing)} from the Hugging Face hub, which "
            f"{'HF_HUB_OFFLINE forbids' if offline else 'this machine cannot reach'} and the local cache lacks. "
            "Download them where the hub is reachable: `python -m model download --to DIR`, copy DIR here and set "
            "AVCHAT_MODEL=DIR (or --checkpoint DIR); or point HF_HOME at a cache that has them "
            "(HF_HUB_OFFLINE=1 then uses it without the network)"
        )


def download(to: str | os.PathLike) -> Path:
    """Fetches the four components (progress bars; an interrupted download resumes) and writes a
    checkpoint folder the service and the command line load as they are."""
    import torch
    from huggingface_hub import snapshot_download
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from . import bunny
    from .config import PROJECTORS_FILE
    from .modeling import mlp2x_gelu
    from .presets import phi2_config
    from .processor import add_media_tokens

    to = Path(to)
    token = os.environ.get("HF_TOKEN")
    for folder, repo in PHI2_REPOS.items():
        print(f"{repo} -> {to / folder}", flush=True)
        snapshot_download(repo, local_dir=str(to / folder), allow_patterns=PATTERNS, token=token)
    config = phi2_config()
    config.vision_tower, config.audio_tower, config.llm = "vision", "audio", "llm"
    config.tokenizer_name, config.vision_projector_init = None, None
    tokenizer = AutoTokenizer.from_pretrained(to / "llm")
    add_media_tokens(tokenizer)
    tokenizer.save_pretrained(to)
    tokenizer.save_pretrained(to / "llm")
    torch.manual_seed(0)  # the audio projector starts untrained (stage 1 trains it)
    audio = mlp2x_gelu(config.audio_config.d_model, config.hidden_size)
    projectors = {
        f"vision_projector.{k}": v
        for k, v in bunny.projector_state(bunny.read_state(str(to / "projector" / "mm_projector.bin"), "")).items()
    }
    projectors.update({f"audio_projector.{k}": v.detach() for k, v in audio.state_dict().items()})
    save_file({k: v.contiguous() for k, v in projectors.items()}, str(to / PROJECTORS_FILE))
    config.save_pretrained(to)
    return to
