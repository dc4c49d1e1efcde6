"""What the service keeps of the LLM when another engine (vLLM) runs it: the input embedding
table, read alone from the weights, and the sampling defaults of its generation_config.json."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig


class EmbeddingsOnly(nn.Module):
    """Stands in for the LLM where another engine runs it: only the input embedding table."""

    def __init__(self, embeddings: nn.Embedding, config):
        super().__init__()
        self.embed_tokens = embeddings
        self.config = config

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    @classmethod
    def load(cls, ref: str, config, dtype: torch.dtype | None) -> EmbeddingsOnly:
        """Reads just ``model.embed_tokens.weight`` from the LLM's safetensors (a folder or a hub id)."""
        import json

        from safetensors import safe_open
        from transformers.utils import cached_file

        key = "model.embed_tokens.weight"
        index = cached_file(ref, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
        name = json.loads(Path(index).read_text())["weight_map"][key] if index else "model.safetensors"
        with safe_open(cached_file(ref, name), "pt") as f:
            weight = f.get_tensor(key)
        embeddings = nn.Embedding.from_pretrained(weight.to(dtype or weight.dtype), freeze=True)
        return cls(embeddings, AutoConfig.from_pretrained(ref) if os.path.isdir(ref) else config)


def generation_config(ref: str):
    """The LLM's generation_config.json (sampling defaults), or transformers' defaults."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(ref)
    except OSError:
        return GenerationConfig()
