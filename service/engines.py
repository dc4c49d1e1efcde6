"""Chooses the generation engine: ``auto`` takes vLLM on a GPU when it is installed (on a CPU
the transformers engine starts in a second instead of a minute, with a fraction of the memory);
``vllm`` and ``transformers`` are taken as asked."""

from __future__ import annotations

import logging

import torch

from .engine import Engine, TransformersEngine

log = logging.getLogger("avchat.engine")


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def create_engine(kind: str, model, settings) -> Engine:
    on_gpu = torch.cuda.is_available() and str(settings.device).startswith("cuda")
    if kind == "vllm" or (kind == "auto" and on_gpu and _vllm_installed()):
        if not _vllm_installed():
            raise RuntimeError("AVCHAT_ENGINE=vllm but vLLM is not installed (pip install '.[vllm]')")
        from .vllm_engine import VLLMEngine

        try:
            return VLLMEngine.from_model(model, settings)
        except Exception as exc:
            if kind == "vllm":
                raise
            log.warning("vLLM is installed but did not start (%s); using the transformers engine", exc)
    return TransformersEngine(model, settings.max_concurrency)
