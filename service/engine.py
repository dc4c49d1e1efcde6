"""Generation engines behind one small interface, and the transformers engine.

An engine takes a prompt embedding matrix ``(T, H)`` (media features already merged into the
text embeddings) and streams text deltas. ``generate`` is an async iterator; leaving it early
(client gone, timeout) stops the work: no token is computed for a request that has ended. The
vLLM engine (``vllm_engine.py``) implements the same interface; ``engines.py`` picks one.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from model.generation import TextStream

from .metrics import METRICS


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


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

    async def close(self) -> None:  # noqa: B027 - optional
        pass


class TransformersEngine(Engine):
    """Generates with the model's own decode loop (KV cache) in worker threads, so the event loop
    never waits on torch; each generation checks a cancel flag between tokens."""

    name = "transformers"

    def __init__(self, model, max_concurrency: int = 4):
        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="generate")
        self._cancels: set[threading.Event] = set()

    async def generate(self, request_id, prompt_embeds, params):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        self._cancels.add(cancel)
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731
        tokenizer = self.model.tokenizer

        def work() -> None:
            if cancel.is_set():  # ended while it waited for a thread
                return
            METRICS.engine_running.inc()
            stream = TextStream(tokenizer, params.stop, tokenizer.eos_token_id)
            count = 0
            tokens = None
            try:
                with torch.inference_mode():
                    seed = None if params.seed is None else params.seed % 2**64
                    tokens = self.model.generate(
                        prompt_embeds,
                        max_new_tokens=params.max_tokens,
                        temperature=params.temperature,
                        top_p=params.top_p,
                        seed=seed,
                    )
                    for token in tokens:
                        if cancel.is_set():
                            return
                        count += 1
                        text = stream.push(token)
                        if stream.finish_reason:
                            put(Delta(text, count, stream.finish_reason))
                            return
                        if text:
                            put(Delta(text, count))
                put(Delta(stream.finish(), count, stream.finish_reason))
            except BaseException as exc:  # surfaces in the request, not in a log nobody reads
                put(exc)
            finally:
                if tokens is not None:
                    tokens.close()
                METRICS.engine_running.dec()

        future = loop.run_in_executor(self._pool, work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason:
                    break
        finally:
            cancel.set()
            self._cancels.discard(cancel)
            if not future.done():
                future.add_done_callback(lambda f: f.exception())

    async def close(self):
        for event in list(self._cancels):
            event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
