"""Where a checkpoint's three components (SigLIP, Whisper, the LLM) come from and how they load:
from their folders or hub ids in a float dtype, with the LLM as its embedding table alone (vLLM
runs the rest) or through bitsandbytes, or as int8 weights stored by an int8 export."""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, SiglipVisionModel, WhisperModel

from . import quantization as quant
from .llm_parts import EmbeddingsOnly


def component(root: str | None, ref: str) -> str:
    """A component reference is a subfolder of the checkpoint, a local folder, or a hub id."""
    if root is not None and os.path.isdir(os.path.join(root, ref)):
        return os.path.join(root, ref)
    return ref


def is_local(root: str | None, ref: str) -> bool:
    return os.path.isdir(component(root, ref))


def load_components(root: str | None, config, dtype, device, embeddings_only: bool, quantization: str):
    """(vision, audio, llm) of the checkpoint at ``root`` (None: hub ids only)."""
    if config.quantization == "int8":
        if embeddings_only:
            raise ValueError(f"{root} holds int8 weights, which only the transformers engine runs")
        return _int8(root, config, dtype)
    kw = {"dtype": dtype} if dtype is not None else {}
    vision = SiglipVisionModel.from_pretrained(component(root, config.vision_tower), **kw)
    audio = WhisperModel.from_pretrained(component(root, config.audio_tower), **kw)
    llm_ref = component(root, config.llm)
    if embeddings_only:
        llm = EmbeddingsOnly.load(llm_ref, config.text_config, dtype)
    elif quantization in quant.BNB_METHODS:
        bnb = quant.bnb_config(quantization)
        llm = AutoModelForCausalLM.from_pretrained(llm_ref, quantization_config=bnb, device_map={"": device}, **kw)
    else:
        llm = AutoModelForCausalLM.from_pretrained(llm_ref, **kw)
    return vision, audio, llm


def _int8(root: str | None, config, dtype: torch.dtype | None):
    """The components of a checkpoint saved with int8 weights, as stored."""
    folders = [component(root, ref) for ref in (config.vision_tower, config.audio_tower, config.llm)]
    if not all(os.path.isdir(f) for f in folders):
        raise ValueError(f"{root}: an int8 checkpoint keeps every component in its own folder")
    vision_cfg, audio_cfg, text_cfg = (AutoConfig.from_pretrained(f) for f in folders)
    return (
        quant.load_int8(lambda: SiglipVisionModel(vision_cfg), folders[0], dtype),
        quant.load_int8(lambda: WhisperModel(audio_cfg), folders[1], dtype),
        quant.load_int8(lambda: AutoModelForCausalLM.from_config(text_cfg), folders[2], dtype),
    )
