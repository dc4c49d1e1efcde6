"""The paper's geometry on this CPU: the phi2-shape preset (SigLIP-so400m, Whisper-small, Phi-2
sizes; random weights built offline) in bfloat16 and in float32, each in a fresh process.

Per dtype: peak memory, load time, SigLIP on 100 frames, Whisper on 30 s, Phi-2 prefill of ~950
tokens, time per generated token, and one real clip end to end (decode -> encoders -> 64 audio +
829 video tokens -> 32 tokens). Beside each figure: this CPU's floor for that work, from the
FLOPs (analytic, from the config) over the matmul speed measured here, or from the bytes of
weights read per token over the memory bandwidth measured here; and DESIGN §6's H100 floor.

``int8`` is weight-only int8 (``AVCHAT_QUANTIZATION=int8``: the encoders' and the LLM's linear
layers) computing in bfloat16, loaded from a checkpoint exported int8 (built once, in its own
process, so quantizing costs nothing here). Each process also keeps its SigLIP, Whisper and
prefill outputs for the same seeded inputs; the report gives their cosine against float32's
(or bfloat16's, without float32).

Then the SigLIP speed-ups, side by side on 16 frames: float32 one frame at a time (the slow way)
against larger chunks, bfloat16, channels-last and torch.compile; and how far bfloat16's
encoder features are from float32's.

    python bench/real_size.py            # ~45 min on 2 cores; needs ~20 GB free for float32
    python bench/real_size.py --quick    # 8 frames instead of 100, no variants (~8 min)
    python bench/real_size.py --dtypes bfloat16,int8 --no-variants   # the int8 comparison alone
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import seconds  # noqa: E402  (bench/timing.py)

CLIP = ROOT / "tests" / "media" / "vllama_dog_barking.mp4"  # 7.2 s, 854x480, speech-free barking
PREFILL_TOKENS = 950
DECODE_TOKENS = 32
# DESIGN §6: one request on an H100 (bf16 at ~790 TFLOP/s, ~3.3 TB/s).
H100_FLOOR = {
    "siglip": "~75 ms",
    "whisper": "a few ms",
    "prefill": "~7 ms",
    "token": "~1.7 ms",
    "e2e": "decode 3-4 s + ~0.1 s",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- analytic work --------------------------------------------------------------------------------


def transformer_flops(layers: int, tokens: int, width: int, ffn: int, kv_tokens: int | None = None) -> float:
    """Multiply-adds x 2 of a pre-norm transformer stack: q/k/v/o, the MLP, scores and values."""
    kv = tokens if kv_tokens is None else kv_tokens
    per_layer = 2 * tokens * (4 * width * width + 2 * width * ffn) + 2 * 2 * tokens * kv * width
    return layers * per_layer


def work(config) -> dict[str, float]:
    v, a, t = config.vision_config, config.audio_config, config.text_config
    patches = (v.image_size // v.patch_size) ** 2
    layer = config.vision_feature_layer
    v_layers = v.num_hidden_layers + 1 + layer if layer < 0 else layer
    siglip = transformer_flops(v_layers, patches, v.hidden_size, v.intermediate_size)
    enc_pos = a.max_source_positions
    whisper = transformer_flops(a.encoder_layers, enc_pos, a.d_model, a.encoder_ffn_dim)
    whisper += transformer_flops(a.decoder_layers, config.audio_tokens, a.d_model, a.decoder_ffn_dim)
    whisper += 2 * config.audio_tokens * enc_pos * a.d_model * 2 * a.decoder_layers  # cross-attention
    prefill = transformer_flops(t.num_hidden_layers, PREFILL_TOKENS, t.hidden_size, t.intermediate_size)
    return {"siglip_per_frame": siglip, "whisper": whisper, "prefill": prefill}


# -- the machine's own speed ---------------------------------------------------------------------


def machine_speed() -> dict[str, float]:
    import torch

    out = {}
    for name in ("float32", "bfloat16"):
        dtype = getattr(torch, name)
        a = torch.randn(2048, 2048).to(dtype)
        b = torch.randn(2048, 2048).to(dtype)
        a @ b
        out[f"matmul_{name}"] = 2 * 2048**3 / seconds(lambda a=a, b=b: a @ b, 5, best=True)
    big = torch.ones(256 * 2**20, dtype=torch.float32)  # 1 GiB, far beyond any cache
    big.sum()
    out["bandwidth"] = big.numel() * 4 / seconds(big.sum, 5, best=True)
    return out


# -- one dtype, in its own process ---------------------------------------------------------------


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def int8_checkpoint() -> Path:
    """phi2-shape exported with int8 weights (as ``training.export --quantization int8`` writes
    it), built once beside the preset."""
    import torch

    from model import AVChatModel, presets
    from model.quantization import quantize_int8

    folder = presets.cache_home() / "phi2-shape-int8"
    if not (folder / "config.json").exists():
        log("building phi2-shape-int8 from phi2-shape (once)")
        model = AVChatModel.from_pretrained("phi2-shape", dtype=torch.bfloat16)
        quantize_int8(model)
        model.save_pretrained(folder)
    return folder


def child(dtype_name: str, frames: int, variants: bool, outputs: Path | None = None) -> dict:
    import torch

    from model import AVChatModel
    from model.generation import answer
    from model.pipeline import decode, encode, preprocess, project, prompt, prompt_embeds

    torch.manual_seed(0)
    dtype = torch.bfloat16 if dtype_name == "int8" else getattr(torch, dtype_name)
    out: dict = {"dtype": dtype_name, "threads": torch.get_num_threads()}
    from model import presets
    from model.modeling import write_random_checkpoint

    log(f"{dtype_name}: loading phi2-shape (built on first use, before the clock starts)")
    presets.resolve("phi2-shape", build=write_random_checkpoint)
    source = "phi2-shape"
    if dtype_name == "int8":
        source = _built_int8()
    start = time.perf_counter()
    model = AVChatModel.from_pretrained(source, dtype=dtype)
    out["load_s"] = time.perf_counter() - start
    out["rss_after_load_gib"] = peak_gib()
    out["params"] = sum(p.numel() for p in model.parameters())
    config = model.config
    size = config.vision_config.image_size

    with torch.inference_mode():
        log(f"{dtype_name}: SigLIP, {frames} frames")
        # The same seeded inputs in every process (drawn in float32, then cast), so that their
        # outputs can be compared.
        pixels = torch.randn(frames, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)
        model.pool_video([pixels[:2]])  # first-call allocations
        start = time.perf_counter()
        pooled = model.pool_video([pixels])
        out["siglip_s"], out["siglip_frames"] = time.perf_counter() - start, frames

        log(f"{dtype_name}: Whisper, 30 s")
        mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(2)).to(dtype)
        heard = model.encode_audio(mel)
        out["whisper_s"] = seconds(lambda: model.encode_audio(mel), 3)

        log(f"{dtype_name}: prefill {PREFILL_TOKENS} tokens, then {DECODE_TOKENS} tokens")
        hidden = config.text_config.hidden_size
        embeds = (torch.randn(1, PREFILL_TOKENS, hidden, generator=torch.Generator().manual_seed(3)) * 0.02).to(dtype)
        model.llm(inputs_embeds=embeds[:, :64], use_cache=True, logits_to_keep=1)
        out["prefill_s"] = seconds(lambda: model.llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1), 2)
        if outputs is not None:
            logits = model.llm(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits
            kept = {"siglip": pooled, "whisper": heard, "prefill_logits": logits}
            torch.save({k: v.float().reshape(-1, v.shape[-1]).cpu() for k, v in kept.items()}, outputs)
        cache = model.llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).past_key_values
        token = torch.tensor([[1]])
        steps = []
        for _ in range(DECODE_TOKENS):
            start = time.perf_counter()
            step = model.llm(input_ids=token, past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            token = step.logits[:, -1:].argmax(-1)
            steps.append(time.perf_counter() - start)
        out["token_s"] = statistics.median(steps)
        del cache, step

    log(f"{dtype_name}: end to end on {CLIP.name}")
    start = time.perf_counter()
    media = decode(str(CLIP), config)
    decoded = time.perf_counter()
    embeddings = project(model, encode(model, [preprocess(model.processor, media)]))[0]
    encoded = time.perf_counter()
    p = prompt(model.processor, [{"role": "user", "content": "What is happening, and what do you hear?"}], embeddings)
    _, generated, _ = answer(model, prompt_embeds(model, p, embeddings), DECODE_TOKENS, ignore_eos=True)
    end = time.perf_counter()
    out["e2e"] = {
        "total_s": end - start,
        "decode_s": decoded - start,
        "encoders_s": encoded - decoded,
        "llm_s": end - encoded,
        "frames": media.report.frames,
        "counts": p.counts,
        "generated": generated,
    }

    if variants and dtype_name != "int8":
        out["variants"] = siglip_variants(model, dtype_name)
    out["peak_gib"] = peak_gib()
    return out


def _built_int8() -> str:
    """The int8 checkpoint's folder, built in a process of its own (its float peak is not ours)."""
    subprocess.run([sys.executable, __file__, "--build-int8"], check=True, stdout=subprocess.DEVNULL)
    return str(int8_checkpoint())


def siglip_variants(model, dtype_name: str, frames: int = 16) -> list[dict]:
    """Seconds per frame for several ways of running SigLIP over the same 16 frames."""
    import torch

    size = model.config.image_size
    rows = []
    pixels = torch.randn(frames, 3, size, size)
    reference = None

    def run(label, chunk, dtype, channels_last=False, compiled=False):
        nonlocal reference
        x = pixels.to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        extra = {}
        if compiled:
            original = model.vision_hidden_states
            fast = torch.compile(original, dynamic=False)
            model.vision_hidden_states = fast
            start = time.perf_counter()
            with torch.inference_mode():
                model.pool_video([x[:chunk]], chunk=chunk)
            extra["compile_s"] = time.perf_counter() - start
        log(f"{dtype_name}: SigLIP variant {label}")
        with torch.inference_mode():
            model.pool_video([x[:chunk]], chunk=chunk)
            start = time.perf_counter()
            feats = model.pool_video([x], chunk=chunk).double()
            seconds = time.perf_counter() - start
        if compiled:
            model.vision_hidden_states = original
        if reference is None:
            reference = feats
        cos = torch.nn.functional.cosine_similarity(feats.flatten(1), reference.flatten(1)).min().item()
        rows.append({"label": label, "s_per_frame": seconds / frames, "cos_vs_first": cos, **extra})

    if dtype_name == "float32":
        run("float32, one frame at a time", 1, torch.float32)
        run("float32, chunks of 8", 8, torch.float32)
        model.vision_tower.to(torch.bfloat16)  # the same weights, rounded: how far bf16 drifts
        run("bfloat16 (same weights), one frame at a time", 1, torch.bfloat16)
        model.vision_tower.to(torch.float32)
    else:
        run("bfloat16, chunks of 8 (shipped)", 8, torch.bfloat16)
        run("bfloat16, chunks of 16", 16, torch.bfloat16)
        run("bfloat16, chunks of 4", 4, torch.bfloat16)
        run("bfloat16, chunks of 8, channels-last", 8, torch.bfloat16, channels_last=True)
        try:
            run("bfloat16, chunks of 8, torch.compile", 8, torch.bfloat16, compiled=True)
        except Exception as exc:  # inductor needs a C++ compiler; say so rather than stop
            rows.append({"label": "bfloat16, torch.compile", "error": str(exc).splitlines()[0][:120]})
    return rows


# -- the report ----------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


COMPUTE = {"float32": "float32", "bfloat16": "bfloat16", "int8": "bfloat16"}  # what the matmuls run in
WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}  # per LLM weight read for a generated token


def cosines(outputs: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Per process, the lowest cosine over rows of its SigLIP, Whisper and prefill outputs
    against the reference process's (float32's, else bfloat16's)."""
    import torch

    reference = "float32" if "float32" in outputs else "bfloat16"
    if reference not in outputs:
        return {}
    ref = torch.load(outputs[reference])
    out = {}
    for d, path in outputs.items():
        if d == reference:
            continue
        mine = torch.load(path)
        row = {}
        for k in ref:
            real = ref[k].norm(dim=-1) > 0  # SigLIP's rows for frames that are not there are zeros
            row[k] = torch.nn.functional.cosine_similarity(mine[k][real].double(), ref[k][real].double(), dim=-1)
        out[d] = {"against": reference} | {k: v.min().item() for k, v in row.items()}
    return out


def report(
    results: dict[str, dict], speed: dict[str, float], flops: dict[str, float], frames: int, cos: dict | None = None
) -> str:
    dtypes = list(results)
    lines = [
        f"phi2-shape on this CPU ({os.cpu_count()} cores, {results[dtypes[0]]['threads']} torch threads); "
        f"matmul {speed['matmul_float32'] / 1e9:.0f} GFLOP/s float32, {speed['matmul_bfloat16'] / 1e9:.0f} "
        f"GFLOP/s bfloat16; memory {speed['bandwidth'] / 1e9:.1f} GB/s",
        "",
        "| | " + " | ".join(f"{d} | its CPU floor" for d in dtypes) + " | H100 floor (DESIGN §6) |",
        "|---|" + "---|---|" * len(dtypes) + "---|",
    ]

    def floor(kind: str, d: str) -> float:
        r = results[d]
        mm = speed[f"matmul_{COMPUTE[d]}"]
        if kind == "siglip":
            return flops["siglip_per_frame"] * r["siglip_frames"] / mm
        if kind == "whisper":
            return flops["whisper"] / mm
        if kind == "prefill":
            return flops["prefill"] / mm
        if kind == "token":
            return r["params_llm"] * WEIGHT_BYTES[d] / speed["bandwidth"]
        return 0.0

    rows = [
        ("peak memory", lambda r: f"{r['peak_gib']:.1f} GiB", None),
        ("load", lambda r: fmt_s(r["load_s"]), None),
        (f"SigLIP, {frames} frames", lambda r: fmt_s(r["siglip_s"]), "siglip"),
        ("Whisper, 30 s", lambda r: fmt_s(r["whisper_s"]), "whisper"),
        (f"prefill, {PREFILL_TOKENS} tokens", lambda r: fmt_s(r["prefill_s"]), "prefill"),
        ("per generated token", lambda r: fmt_s(r["token_s"]), "token"),
    ]
    for label, value, kind in rows:
        cells = []
        for d in dtypes:
            cells.append(value(results[d]))
            cells.append(fmt_s(floor(kind, d)) if kind else "")
        h100 = H100_FLOOR.get(kind, "") if kind else ""
        if kind == "siglip" and frames != 100:
            h100 = f"~{75 * frames / 100:.0f} ms"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {h100} |")
    cells = []
    for d in dtypes:
        e = results[d]["e2e"]
        cells.append(
            f"{fmt_s(e['total_s'])} (decode {fmt_s(e['decode_s'])}, encoders {fmt_s(e['encoders_s'])}, "
            f"LLM {fmt_s(e['llm_s'])})"
        )
        cells.append("")
    e = results[dtypes[0]]["e2e"]
    lines.append(
        f"| {CLIP.name} end to end ({e['frames']} frames; audio {e['counts']['audio']} + video "
        f"{e['counts']['video']} tokens; {e['generated']} generated) | "
        + " | ".join(cells)
        + f" | {H100_FLOOR['e2e']} |"
    )
    if "int8" in results and "bfloat16" in results:
        q, b = results["int8"], results["bfloat16"]
        lines += [
            "",
            "int8 against bfloat16 (measured / measured): "
            f"end to end {q['e2e']['total_s'] / b['e2e']['total_s']:.2f}x, peak memory "
            f"{q['peak_gib'] / b['peak_gib']:.2f}x, SigLIP {q['siglip_s'] / b['siglip_s']:.2f}x, Whisper "
            f"{q['whisper_s'] / b['whisper_s']:.2f}x, prefill {q['prefill_s'] / b['prefill_s']:.2f}x, per token "
            f"{q['token_s'] / b['token_s']:.2f}x",
        ]
    for d, c in (cos or {}).items():
        lines.append(
            f"{d} outputs against {c['against']}'s, lowest cosine over rows: SigLIP {c['siglip']:.4f}, "
            f"Whisper {c['whisper']:.4f}, prefill logits {c['prefill_logits']:.4f}"
        )
    lines.append("")
    lines.append("Share of the CPU floor reached (floor / measured; 1.0 = at the roofline):")
    for d in dtypes:
        r = results[d]
        parts = [
            f"{k} {floor(k, d) / r[m]:.2f}"
            for k, m in (
                ("siglip", "siglip_s"),
                ("whisper", "whisper_s"),
                ("prefill", "prefill_s"),
                ("token", "token_s"),
            )
        ]
        lines.append(f"- {d}: " + ", ".join(parts))
    variants = [v for d in dtypes for v in results[d].get("variants", [])]
    if variants:
        slow = next((v for v in variants if v["label"].startswith("float32, one frame")), None)
        lines += ["", "SigLIP, 16 frames, seconds per frame (speed-up against float32 one frame at a time):", ""]
        lines += ["| variant | s / frame | speed-up | min cosine vs its dtype's first row |", "|---|---|---|---|"]
        for v in variants:
            if "error" in v:
                lines.append(f"| {v['label']} | failed: {v['error']} | | |")
                continue
            gain = f"{slow['s_per_frame'] / v['s_per_frame']:.2f}x" if slow else ""
            note = f" (compile {v['compile_s']:.0f} s)" if "compile_s" in v else ""
            lines.append(f"| {v['label']}{note} | {v['s_per_frame']:.2f} | {gain} | {v['cos_vs_first']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 frames, no SigLIP variants")
    parser.add_argument("--dtypes", default="bfloat16,int8,float32", help="any of bfloat16, int8, float32")
    parser.add_argument("--no-variants", action="store_true", help="skip the SigLIP variants")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--outputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build-int8", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--variants", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    frames = args.frames or (8 if args.quick else 100)
    if args.build_int8:
        from model import presets
        from model.modeling import write_random_checkpoint

        presets.resolve("phi2-shape", build=write_random_checkpoint)
        int8_checkpoint()
        return 0
    if args.child:
        result = child(args.child, frames, args.variants, args.outputs)
        print(json.dumps(result))
        return 0

    from model.presets import phi2_shape_config

    config = phi2_shape_config()
    flops = work(config)
    log("measuring this machine's matmul speed and memory bandwidth")
    speed = machine_speed()
    results, outputs = {}, {}
    kept = Path(tempfile.mkdtemp(prefix="real-size-"))
    for d in args.dtypes.split(","):
        outputs[d] = kept / f"{d}.pt"
        cmd = [sys.executable, __file__, "--child", d, "--frames", str(frames), "--outputs", str(outputs[d])]
        if not args.quick and not args.no_variants:
            cmd.append("--variants")
        log(f"fresh process: {' '.join(cmd[1:])}")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            log(f"{d} failed (exit {proc.returncode}); skipped")
            outputs.pop(d)
            continue
        results[d] = json.loads(proc.stdout.strip().splitlines()[-1])
        t = config.text_config
        # Weights read per generated token: every layer and lm_head (the embedding table gives one row).
        results[d]["params_llm"] = t.vocab_size * t.hidden_size + t.num_hidden_layers * (
            4 * t.hidden_size**2 + 2 * t.hidden_size * t.intermediate_size
        )
    if not results:
        return 1
    cos = cosines(outputs)
    shutil.rmtree(kept, ignore_errors=True)
    text = report(results, speed, flops, frames, cos)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"speed": speed, "flops": flops, "results": results, "cosines": cos}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
