"""Generation engines behind one small interface.

An engine takes a prompt embedding matrix ``(T, H)`` (media features already merged into the
text embeddings) and streams text deltas. ``generate`` is an async iterator; leaving it early
(the client went away) stops the work. The vLLM engine implements the same interface.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch


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
    def generate(self, request_id: str, prompt_embeds: torch.Tensor, params: SamplingParams
                 ) -> AsyncIterator[Delta]:
        """Streams deltas; the last one has a finish_reason."""

    async def abort(self, request_id: str) -> None:  # noqa: B027 - optional
        """Stops a running generation (also done by leaving the iterator)."""

    async def close(self) -> None:  # noqa: B027 - optional
        pass


class TextStream:
    """Incremental detokenisation with stop strings: emits only text that is final (no half
    multi-byte character, nothing that might still turn into a stop string)."""

    def __init__(self, tokenizer, stop: list[str], eos_token_id: int | None):
        self.tokenizer, self.stop, self.eos = tokenizer, [s for s in stop if s], eos_token_id
        self.ids: list[int] = []
        self.emitted = ""
        self.finish_reason: str | None = None

    def push(self, token: int) -> str:
        if token == self.eos:
            self.finish_reason = "stop"
            return self._flush(self._text())
        self.ids.append(token)
        text = self._text()
        if text.endswith("\ufffd"):
            return ""
        for s in self.stop:
            at = text.find(s, max(0, len(self.emitted) - len(s)))
            if at >= 0:
                self.finish_reason = "stop"
                return self._flush(text[:at])
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._flush(text[: len(text) - hold])

    def finish(self) -> str:
        """At max_tokens: whatever is held back is final now."""
        self.finish_reason = self.finish_reason or "length"
        return self._flush(self._text().rstrip("\ufffd"))

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _flush(self, upto: str) -> str:
        delta = upto[len(self.emitted):] if upto.startswith(self.emitted) else ""
        self.emitted = max(self.emitted, upto, key=len)
        return delta


class TransformersEngine(Engine):
    """Generates with the model's own decode loop (KV cache) in worker threads, so the event loop
    never waits on torch; each generation checks a cancel flag between tokens."""

    name = "transformers"

    def __init__(self, model, max_concurrency: int = 4):
        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="generate")
        self._cancel: dict[str, threading.Event] = {}

    async def generate(self, request_id, prompt_embeds, params):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = self._cancel[request_id] = threading.Event()
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731
        tokenizer = self.model.tokenizer

        def work() -> None:
            stream = TextStream(tokenizer, params.stop, tokenizer.eos_token_id)
            count = 0
            try:
                with torch.inference_mode():
                    tokens = self.model.generate(prompt_embeds, max_new_tokens=params.max_tokens,
                                                 temperature=params.temperature, top_p=params.top_p,
                                                 seed=params.seed)
                    for token in tokens:
                        if cancel.is_set():
                            tokens.close()
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
            self._cancel.pop(request_id, None)
            if not future.done():
                future.add_done_callback(lambda f: f.exception())

    async def abort(self, request_id):
        event = self._cancel.get(request_id)
        if event is not None:
            event.set()

    async def close(self):
        for event in self._cancel.values():
            event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def create_engine(kind: str, model, settings) -> Engine:
    """``auto`` picks vLLM when it is importable and starts, else transformers."""
    if kind in ("vllm", "auto"):
        try:
            from .vllm_engine import VLLMEngine

            import vllm  # noqa: F401
        except ImportError:
            if kind == "vllm":
                raise RuntimeError("AVCHAT_ENGINE=vllm but vLLM is not installed (pip install '.[vllm]')") from None
        else:
            try:
                return VLLMEngine.from_model(model, settings)
            except Exception as exc:
                if kind == "vllm":
                    raise
                logging.getLogger("avchat.engine").warning(
                    "vLLM is installed but did not start (%s); using the transformers engine", exc)
    return TransformersEngine(model, settings.max_concurrency)
