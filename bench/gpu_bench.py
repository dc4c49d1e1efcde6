"""The GPU path at real size, one table: encoder time per video, then each engine (transformers,
vLLM, with the LLM in the dtype and then in FP8) at 1 and 16 concurrent streams: time to first
token, tokens/s, peak GPU memory. Beside each figure, its floor from DESIGN §6 (H100, bf16), so
the first run on a GPU host fills the whole table. Run by bench/gpu.sh.

The model is ``phi2`` when its weights are in the Hugging Face cache (``python -m model
download``), else ``phi2-shape`` (the same sizes, random weights, built offline). ``--device cpu
--preset tiny`` runs the same code on a CPU in a minute (the test suite does, so it cannot rot).

    python bench/gpu_bench.py [--preset phi2|phi2-shape|tiny] [--tokens 128] [--engines transformers,vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from timing import seconds  # noqa: E402  (bench/timing.py)

CLIP = ROOT / "tests" / "media" / "vllama_dog_barking.mp4"
# DESIGN §6 on an H100: SigLIP 100 frames ~75 ms, Whisper 30 s a few ms, prefill ~950 tokens
# ~7 ms, decode ~1.7 ms per step whatever the batch (weights are read once per step).
FLOOR_SIGLIP_MS, FLOOR_WHISPER_MS, FLOOR_PREFILL_MS, FLOOR_STEP_MS = 75.0, 3.0, 7.0, 1.7


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class GpuMemory:
    """Peak memory used on the GPU by every process (vLLM's engine runs in its own), from
    nvidia-smi every 0.2 s; on a CPU, the peak resident memory of this process tree instead."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _used_gib(self) -> float:
        if self.device.startswith("cuda"):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
            )
            return float(out.stdout.split()[0]) / 1024 if out.returncode == 0 else 0.0
        import psutil

        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**30

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._used_gib())

    def __enter__(self) -> GpuMemory:
        self.peak = self._used_gib()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used_gib())


def timed_ms(fn, device: str, repeat: int = 5) -> float:
    fn()  # warm-up
    sync(device)
    return seconds(fn, repeat, sync=lambda: sync(device)) * 1e3


async def streams(engine, embeds: torch.Tensor, concurrency: int, tokens: int) -> dict:
    from service.engine import SamplingParams

    async def one(i: int):
        start = time.perf_counter()
        first, count = None, 0
        params = SamplingParams(max_tokens=tokens, temperature=1.0, seed=1000 + i)
        async for delta in engine.generate(f"bench-{concurrency}-{i}-{time.time_ns()}", embeds, params):
            if first is None and delta.completion_tokens:
                first = time.perf_counter()
            count = delta.completion_tokens
        return (first or time.perf_counter()) - start, count

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "ttft_ms": statistics.median(r[0] for r in results) * 1e3,
        "tokens_per_s": sum(r[1] for r in results) / wall,
        "tokens_per_answer": statistics.mean(r[1] for r in results),
    }


def choose_preset(asked: str | None) -> str:
    if asked:
        return asked
    from model.hub import PHI2_REPOS, ensure_available

    try:
        ensure_available([r for k, r in PHI2_REPOS.items() if k != "projector"])
        return "phi2"
    except Exception as exc:  # not cached and no hub: the same sizes, random weights
        log(f"phi2 weights not available ({str(exc).splitlines()[0][:100]}); using phi2-shape")
        return "phi2-shape"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="default: phi2 if cached, else phi2-shape")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on a CPU")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--vllm-gpu-memory", type=float, default=0.6)
    parser.add_argument(
        "--quantizations",
        default=None,
        help="vLLM's LLM quantizations to run, each in turn (default: none,fp8 on a GPU, none on a CPU)",
    )
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print("no CUDA GPU here (for a dry run on a CPU: --device cpu --preset tiny)", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("bfloat16" if on_gpu else "float32")
    dtype = getattr(torch, dtype_name)
    levels = [int(n) for n in args.concurrency.split(",")]

    from model import AVChatModel
    from model.pipeline import decode, encode, preprocess, project, prompt, prompt_embeds

    preset = choose_preset(args.preset)
    log(f"loading {preset} ({dtype_name}, {args.device})")
    start = time.perf_counter()
    model = AVChatModel.from_pretrained(preset, dtype=dtype, device=args.device)
    load_s = time.perf_counter() - start
    config = model.config
    rows: list[tuple[str, str, str]] = []  # (what, measured, floor)
    rows.append(("model", f"{preset}, {dtype_name}, loaded in {load_s:.1f} s", ""))

    # The encoders on a real clip's frames and audio (decoded once, on the CPU).
    media = decode(str(CLIP), config)
    tensors = preprocess(model.processor, media)
    frames = tensors.video.to(args.device, dtype)
    mel = tensors.audio[:1].to(args.device, dtype)  # its first 30 s window
    n = frames.shape[0]
    with torch.inference_mode():
        siglip = timed_ms(lambda: model.pool_video([frames]), args.device)
        whisper = timed_ms(lambda: model.encode_audio(mel), args.device)
    rows.append((f"SigLIP, {n} frames", f"{siglip:.1f} ms", f"~{FLOOR_SIGLIP_MS * n / 100:.0f} ms"))
    rows.append(("Whisper, 30 s window", f"{whisper:.1f} ms", f"~{FLOOR_WHISPER_MS:.0f} ms"))
    rows.append(
        ("encoders per video", f"{siglip + whisper:.1f} ms", f"~{FLOOR_SIGLIP_MS * n / 100 + FLOOR_WHISPER_MS:.0f} ms")
    )

    embeddings = project(model, encode(model, [tensors]))[0]
    p = prompt(model.processor, [{"role": "user", "content": "Describe what you see and hear."}], embeddings)
    embeds = prompt_embeds(model, p, embeddings).cpu()
    c = p.counts
    rows.append(
        ("prompt", f"{sum(c.values())} tokens = audio {c['audio']} + video {c['video']} + text {c['text']}", "")
    )

    def floors(concurrency: int) -> str:
        # Prefills are compute-bound (n of them take n times as long); decode steps are
        # memory-bound (one read of the weights serves the whole batch).
        ttft = (
            f"~{FLOOR_PREFILL_MS:.0f} ms"
            if concurrency == 1
            else f"~{FLOOR_PREFILL_MS:.0f}-{FLOOR_PREFILL_MS * concurrency:.0f} ms"
        )
        return f"TTFT {ttft}, ~{concurrency * 1e3 / FLOOR_STEP_MS:,.0f} tokens/s"

    weights_gb = sum(t.numel() * t.element_size() for t in model.parameters()) / 1e9

    engines = args.engines.split(",")
    if "transformers" in engines:
        from service.transformers_engine import TransformersEngine

        engine = TransformersEngine(model, max_concurrency=max(levels))
        with GpuMemory(args.device) as mem:
            asyncio.run(streams(engine, embeds, 1, 4))  # warm-up
            for level in levels:
                log(f"transformers, {level} concurrent")
                r = asyncio.run(streams(engine, embeds, level, args.tokens))
                rows.append(
                    (
                        f"transformers, {level} concurrent",
                        f"TTFT {r['ttft_ms']:.0f} ms, {r['tokens_per_s']:.0f} tokens/s "
                        f"({r['tokens_per_answer']:.0f} tokens per answer)",
                        floors(level),
                    )
                )
        rows.append(("transformers, peak memory", f"{mem.peak:.1f} GiB", f"the weights: {weights_gb:.2f} GB"))

    if "vllm" in engines:
        from service.settings import Settings
        from service.vllm_engine import VLLMEngine

        # As in the service: the LLM lives only in vLLM. Free this process's copy first.
        model.llm = None
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        settings = Settings(dtype=dtype_name, vllm_gpu_memory=args.vllm_gpu_memory)
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

        async def run_vllm(quantization: str):
            name = "vllm" if quantization == "none" else f"vllm {quantization}"
            log(f"starting {name}")
            start = time.perf_counter()
            engine = VLLMEngine.from_model(model, settings.model_copy(update={"quantization": quantization}))
            out = [(f"{name}, start", f"{time.perf_counter() - start:.0f} s (load, warm-up, graphs)", "")]
            await streams(engine, embeds, 1, 4)  # warm-up
            for level in levels:
                log(f"{name}, {level} concurrent")
                r = await streams(engine, embeds, level, args.tokens)
                out.append(
                    (
                        f"{name}, {level} concurrent",
                        f"TTFT {r['ttft_ms']:.0f} ms, {r['tokens_per_s']:.0f} tokens/s "
                        f"({r['tokens_per_answer']:.0f} tokens per answer)",
                        floors(level),
                    )
                )
            await engine.close()
            del engine
            gc.collect()  # shut down here, not during interpreter exit
            return out

        quantizations = (args.quantizations or ("none,fp8" if on_gpu else "none")).split(",")
        for quantization in quantizations:
            with GpuMemory(args.device) as mem:
                rows += asyncio.run(run_vllm(quantization))
            label = "vllm" if quantization == "none" else f"vllm {quantization}"
            rows.append(
                (
                    f"{label}, peak memory (all processes)",
                    f"{mem.peak:.1f} GiB",
                    f"its share: {args.vllm_gpu_memory:.0%}",
                )
            )

    name = torch.cuda.get_device_name() if on_gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"\n{name}; {args.tokens} tokens per answer; floors from DESIGN §6 (H100, bf16)\n")
    print("| | measured | floor |\n|---|---|---|")
    for what, value, floor in rows:
        print(f"| {what} | {value} | {floor} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
