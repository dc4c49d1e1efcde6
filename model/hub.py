"""The real weights on the Hugging Face hub: which they are, and whether they can be had
(answered in seconds, not after a minute of retries). ``download.py`` fetches them."""

from __future__ import annotations

import os
import socket
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
