"""Real-size numbers on one GPU with random bf16 weights built from the phi2 configs (nothing is
downloaded): SigLIP on 100 frames, Whisper on 30 s, and for each engine time to first token and
decode tokens/s with 1 and 16 concurrent requests. Prints one markdown table. Run by bench/gpu.sh.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


class IdTokenizer:
    """Stands in for Phi-2's tokenizer (not downloadable here): text is the ids."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def timed(fn, repeat=5):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def engine_run(engine, embeds, concurrency: int, tokens: int) -> tuple[float, float]:
    from service.engine import SamplingParams

    async def one(i):
        start = time.perf_counter()
        first, count = None, 0
        async for delta in engine.generate(
            f"r{i}-{time.time()}", embeds, SamplingParams(max_tokens=tokens, temperature=1.0, seed=i)
        ):
            first = first or time.perf_counter()
            count = delta.completion_tokens
        return first - start, count, time.perf_counter() - first

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(concurrency)))
    wall = time.perf_counter() - start
    ttft = statistics.median(r[0] for r in results)
    return ttft, sum(r[1] for r in results) / wall


def main() -> int:
    from model.modeling import AVChatModel
    from model.presets import phi2_config

    assert torch.cuda.is_available(), "needs a GPU"
    tokens = int(os.environ.get("TOKENS", "128"))
    rows = []
    config = phi2_config()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AVChatModel.from_config(config).to(torch.bfloat16).eval()
    model.tokenizer = IdTokenizer()
    config.video_token_id, config.audio_token_id = 50295, 50296
    frames = torch.randn(100, 3, 384, 384, device="cuda", dtype=torch.bfloat16)
    mel = torch.randn(1, 80, 3000, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        rows.append(
            (
                "SigLIP so400m, 100 frames (layer -2, pooled)",
                f"{timed(lambda: model.pool_video([frames])) * 1e3:.1f} ms",
            )
        )
        rows.append(
            ("Whisper-small, one 30 s window (64 tokens)", f"{timed(lambda: model.encode_audio(mel)) * 1e3:.1f} ms")
        )
        ids = torch.randint(0, 50000, (1, 950), device="cuda")
        ids[0, 10:74] = 50296
        ids[0, 80:909] = 50295
        embeds = model.embed_inputs(ids, pixel_values_videos=frames[None], input_features=mel)[0]
    rows.append(("prompt", f"{embeds.shape[0]} tokens (64 audio + 829 video + text)"))

    from service.engine import TransformersEngine

    hf = TransformersEngine(model, max_concurrency=16)
    for n in (1, 16):
        ttft, tps = asyncio.run(engine_run(hf, embeds, n, tokens))
        rows.append((f"transformers, {n} concurrent", f"TTFT {ttft * 1e3:.0f} ms, {tps:.0f} tokens/s"))

    # vLLM loads the LLM from a folder: write the random Phi-2 there (bf16, ~5.6 GB).
    from service.vllm_engine import VLLMEngine

    folder = Path(tempfile.mkdtemp(prefix="phi2-random-", dir=os.environ.get("TMPDIR", "/tmp")))
    model.llm.save_pretrained(folder)
    model.llm.to("cpu")
    torch.cuda.empty_cache()
    engine = VLLMEngine(
        str(folder), None, dtype="bfloat16", max_model_len=2048, gpu_memory_utilization=0.6, skip_tokenizer_init=True
    )

    async def vllm_runs():
        out = []
        for n in (1, 16):
            await engine_run(engine, embeds, 1, 4)  # warm-up
            out.append((n, *await engine_run(engine, embeds, n, tokens)))
        return out

    for n, ttft, tps in asyncio.run(vllm_runs()):
        rows.append((f"vllm, {n} concurrent", f"TTFT {ttft * 1e3:.0f} ms, {tps:.0f} tokens/s"))
    print(f"\n{torch.cuda.get_device_name()}, random bf16 weights at real size, {tokens} tokens per answer\n")
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
