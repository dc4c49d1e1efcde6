"""Loading what serves requests, for the service and the in-process batch command alike: ffmpeg
checked, the model loaded (with vLLM, only its embedding table: vLLM holds the LLM), the engine
started, the media worker (and the shared feature store, when configured), admission and the
chat service."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from model.ffmpeg import check_ffmpeg
from model.quantization import VLLM_METHODS

from .admission import Admission
from .settings import Settings

log = logging.getLogger("avchat.service")


@dataclass
class Parts:
    model: object
    engine: object
    worker: object
    admission: Admission
    chat: object
    ffmpeg: str  # its version line


async def load(settings: Settings) -> Parts:
    """Everything a request needs; raises ``FfmpegMissing`` or the load's own error."""
    from .engines import choose, create_engine
    from .media_worker import MediaWorker
    from .serving import ChatService

    version = await asyncio.to_thread(check_ffmpeg)
    kind = choose(settings.engine, settings.device)
    check_quantization(settings, kind)
    # With vLLM running the LLM, the service keeps only its embedding table (not a second copy).
    model = await asyncio.to_thread(load_model, settings, kind == "vllm")
    try:
        engine = await asyncio.to_thread(create_engine, kind, model, settings)
    except Exception as exc:
        if settings.engine != "auto" or settings.quantization in VLLM_METHODS:
            raise
        log.warning("vLLM did not start (%s); using the transformers engine", exc)
        model = await asyncio.to_thread(load_model, settings, False)
        engine = create_engine("transformers", model, settings)
    worker = MediaWorker(model, settings)
    if settings.feature_store:
        worker.tiers.store = _store(settings, worker, model)
    admission = Admission(settings)
    chat = ChatService(model, worker, engine, settings, generation_defaults(model), admission)
    return Parts(model, engine, worker, admission, chat, version)


def _store(settings: Settings, worker, model):
    """The shared feature tier, for this checkpoint (its fingerprint) and the tensors it produces."""
    import torch

    from .feature_store import FeatureStore

    config = model.config
    shapes = {
        "video": (config.video_tokens, config.hidden_size),
        "audio": (config.audio_tokens, config.hidden_size, config.max_audio_windows),  # 64 rows a window
    }
    store = FeatureStore(
        settings.feature_store,
        worker.fingerprint,
        settings.feature_ttl_s,
        settings.feature_store_timeout_s,
        shapes,
        getattr(torch, settings.dtype),
        settings.device,
    )
    log.info("feature store", extra={"fields": {"url": store.safe_url(), "fingerprint": worker.fingerprint}})
    return store


def _llm_folder(model: str) -> str | None:
    """The checkpoint's LLM folder, when ``model`` is a checkpoint folder that has one."""
    import json
    import os

    config = os.path.join(model, "config.json")
    if not os.path.isfile(config):
        return None
    with open(config) as f:
        llm = json.load(f).get("llm") or "llm"
    folder = os.path.join(model, llm)
    return folder if os.path.isdir(folder) else llm


def check_quantization(settings: Settings, kind: str | None = None) -> None:
    """Raises ``QuantizationUnavailable`` (what would work, in its message) unless
    ``AVCHAT_QUANTIZATION`` runs with this engine on this device; before anything loads."""
    from model.quantization import check

    from .engines import choose

    check(
        settings.quantization,
        kind or choose(settings.engine, settings.device),
        settings.device,
        _llm_folder(settings.model),
    )


def load_model(settings: Settings, embeddings_only: bool):
    """The model, loaded in a worker thread so /health answers meanwhile."""
    import torch
    from transformers.utils import logging as hf_logging

    from model import AVChatModel

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in a service log
    return AVChatModel.from_pretrained(
        settings.model,
        dtype=getattr(torch, settings.dtype),
        device=settings.device,
        embeddings_only=embeddings_only,
        quantization=settings.quantization,
    )


def generation_defaults(model) -> dict:
    """Sampling defaults from the checkpoint's generation_config.json, as vLLM takes them: greedy
    unless it samples (``do_sample``), then its temperature and top_p; its max_new_tokens."""
    config = model.generation_config
    if config is None:
        return {}
    defaults = (
        {"temperature": float(config.temperature or 1.0), "top_p": float(config.top_p or 1.0)}
        if config.do_sample
        else {"temperature": 0.0}
    )
    if config.max_new_tokens:
        defaults["max_tokens"] = int(config.max_new_tokens)
    return defaults
