"""Chooses and starts the generation engine: ``auto`` takes vLLM on a GPU when it is installed (on a
CPU the transformers engine starts in a second instead of a minute, with a fraction of the
memory); ``vllm`` and ``transformers`` are taken as asked. The choice comes before the model
loads, so that with vLLM the service loads only the LLM's embedding table."""

from __future__ import annotations

import importlib.util
import logging

from .engine import Engine

log = logging.getLogger("avchat.engine")


def _vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose(kind: str, device: str) -> str:
    """``vllm`` or ``transformers``."""
    if kind == "vllm":
        if not _vllm_installed():
            raise RuntimeError("AVCHAT_ENGINE=vllm but vLLM is not installed (pip install '.[vllm]')")
        return "vllm"
    import torch

    on_gpu = torch.cuda.is_available() and str(device).startswith("cuda")
    return "vllm" if kind == "auto" and on_gpu and _vllm_installed() else "transformers"


def create_engine(kind: str, model, settings) -> Engine:
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine.from_model(model, settings)
    from .transformers_engine import TransformersEngine

    return TransformersEngine(model, settings.max_concurrency)
