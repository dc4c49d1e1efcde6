"""Bunny's checkpoint formats (BAAI-DCAI/Bunny, ``bunny/model/``): reading its state dicts and
finding the parts this model takes from them.

Bunny keeps its vision projector as ``model.mm_projector.{0,2}.{weight,bias}`` (an
``mlp2x_gelu``: Linear, GELU, Linear), in ``mm_projector.bin`` after pretraining and inside the
model's weights after fine-tuning.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

PROJECTOR_PREFIX = "model.mm_projector."


def read_state(source: str, hub_file: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.bin``/``.safetensors`` file, or ``hub_file`` of a hub repo."""
    if os.path.isfile(source):
        path = source
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, hub_file)
    if path.endswith(".safetensors"):
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def projector_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision projector's weights, keyed as this model's ``vision_projector`` keys them."""
    part = {k[len(PROJECTOR_PREFIX) :]: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    if not part:
        raise ValueError(f"no '{PROJECTOR_PREFIX}*' keys in the Bunny projector state dict (found {sorted(state)[:4]})")
    return part
