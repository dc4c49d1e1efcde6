"""The transformers engine: the model's own generation stage (``model.generation.generate_text``,
its decode loop with a KV cache) in worker threads, so the event loop never waits on torch; each
generation checks a cancel flag between tokens."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from model.generation import generate_text

from .engine import Delta, Engine
from .metrics import METRICS


class TransformersEngine(Engine):
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

        def work() -> None:
            if cancel.is_set():  # ended while it waited for a thread
                return
            METRICS.engine_running.inc()
            deltas = generate_text(
                self.model,
                prompt_embeds,
                params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                stop=params.stop,
                ignore_eos=params.ignore_eos,
            )
            try:
                for d in deltas:
                    if cancel.is_set():
                        return
                    put(Delta(d.text, d.tokens, d.finish_reason))
            except BaseException as exc:  # surfaces in the request, not in a log nobody reads
                put(exc)
            finally:
                deltas.close()
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
