"""The interface every generation engine implements; nothing here imports torch.

An engine takes a prompt embedding matrix ``(T, H)`` (media features already merged into the
text embeddings) and streams text deltas. ``generate`` is an async iterator; leaving it early
(client gone, timeout) stops the work: no token is computed for a request that has ended. An
engine that can die (vLLM's runs in other processes) says so through :meth:`Engine.dead`, and
its requests fail with :class:`~service.errors.EngineStopped` (503).

The engines: ``transformers_engine.py`` (the model's own decode loop in threads) and
``vllm_engine.py`` (vLLM's ``AsyncLLM``); ``engines.py`` picks one.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False


@dataclass
class Delta:
    text: str
    completion_tokens: int  # generated so far
    finish_reason: str | None = None  # "stop" or "length" on the last delta


class Engine(abc.ABC):
    name: str

    @abc.abstractmethod
    def generate(self, request_id: str, prompt_embeds: torch.Tensor, params: SamplingParams) -> AsyncIterator[Delta]:
        """Streams deltas; the last one has a finish_reason."""

    def dead(self) -> str | None:
        """Why the engine can generate no more (None while it can)."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional
        pass
