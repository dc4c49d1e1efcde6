"""Command line: ask a question about a video (or audio, or an image) and stream the answer.

python -m model ask VIDEO "question" [--checkpoint DIR | --preset demo|tiny|phi2] [--modalities audio,video]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="ask one question about a video (or audio, or image) file")
    ask.add_argument("video", help="a video, audio or image file")
    ask.add_argument("question", help="what to ask about it")
    src = ask.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="a checkpoint folder (what training writes)")
    src.add_argument(
        "--preset",
        default=None,
        help="a built-in preset: demo (default; trained on synthetic clips), tiny (random weights), phi2-shape "
        "(the paper's sizes, random weights, built offline) or phi2 (the real components from the hub)",
    )
    ask.add_argument(
        "--modalities",
        default=None,
        help="comma-separated subset of audio,video (default: what the model was trained on)",
    )
    ask.add_argument("--start", type=float, default=None, help="analyse from this second on")
    ask.add_argument("--end", type=float, default=None, help="analyse up to this second")
    ask.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate (default 64)")
    ask.add_argument(
        "--max-audio-windows",
        type=int,
        default=None,
        help="hear at most this many 30 s windows (default: as many as the model takes and fit)",
    )
    ask.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    ask.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights' dtype (bfloat16 halves memory and, on a CPU with AVX512-BF16, time)",
    )
    ask.add_argument(
        "--quantization",
        default="none",
        choices=["none", "int8", "bnb-8bit", "bnb-4bit"],
        help="int8: weight-only int8 encoders and LLM on a CPU (half of bfloat16's memory); bnb-*: the LLM "
        "through bitsandbytes on a GPU. A checkpoint exported with int8 weights loads as int8 anyway",
    )
    dl = sub.add_parser("download", help="fetch the paper's components and write a ready phi2 checkpoint folder")
    dl.add_argument("--to", default="checkpoints/phi2", help="the folder to write (default checkpoints/phi2)")
    ib = sub.add_parser("import-bunny", help="convert a Bunny-format merged checkpoint folder into ours")
    ib.add_argument("source", help="the Bunny-format folder (config.json, weights, tokenizer)")
    ib.add_argument("target", help="the checkpoint folder to write")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _ask(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from .errors import ContextLengthError, InvalidWindow, MediaError
    from .generation import generate_text
    from .media import Window
    from .modalities import UnknownModality
    from .modalities import check as check_modalities
    from .modeling import AVChatModel
    from .pipeline import decode, encode, heard, preprocess, project, prompt, prompt_embeds
    from .quantization import QuantizationUnavailable
    from .quantization import check as check_quantization

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not os.path.exists(args.video):
        return _fail(f"{args.video}: no such file")
    try:
        modalities = check_modalities(args.modalities, "--modalities") if args.modalities else None
    except UnknownModality as exc:
        return _fail(str(exc))
    if args.max_tokens < 1:
        return _fail("--max-tokens must be at least 1")
    source = args.checkpoint or args.preset or "demo"
    try:
        check_quantization(args.quantization, "transformers", args.device)
        model = AVChatModel.from_pretrained(
            source, device=args.device, dtype=getattr(torch, args.dtype), quantization=args.quantization
        )
    except QuantizationUnavailable as exc:
        return _fail(f"--quantization {args.quantization}: {exc}")
    except (OSError, ValueError) as exc:
        return _fail(f"cannot load the model from {source!r}: {exc}")
    window = Window(args.start or 0.0, args.end) if args.start is not None or args.end is not None else None
    try:
        media = decode(args.video, model.config, modalities, window)
        embeddings = project(model, encode(model, [preprocess(model.processor, media)]))[0]
        p = prompt(
            model.processor,
            [{"role": "user", "content": args.question}],
            embeddings,
            modalities,
            max_new_tokens=args.max_tokens,
            max_audio_windows=args.max_audio_windows,
        )
    except (MediaError, ContextLengthError, InvalidWindow) as exc:
        return _fail(str(exc))
    start = time.perf_counter()
    first = None
    generated = 0
    embeds = prompt_embeds(model, p, embeddings)
    sampling = dict(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    for delta in generate_text(model, embeds, args.max_tokens, **sampling):
        first = first or time.perf_counter()
        generated = delta.tokens
        sys.stdout.write(delta.text)
        sys.stdout.flush()
    end = time.perf_counter()
    counts, report = p.counts, heard(media.report, p, model.config)
    print()
    print(
        f"[tokens] prompt {sum(counts.values())} = audio {counts['audio']} + video {counts['video']} + "
        f"text {counts['text']}; generated {generated}",
        file=sys.stderr,
    )
    print(
        f"[media] {report.duration_s:.1f} s analysed, {report.frames} frames "
        f"({media.frames.mode if media.frames else '-'}), audio heard {report.audio_s:.1f} s"
        + (
            f", {report.audio_truncated_s:.1f} s not heard ({p.audio_windows} window(s) of 30 s; --start picks where)"
            if report.audio_truncated_s > 0
            else ""
        ),
        file=sys.stderr,
    )
    print(
        f"[time] first token {((first or end) - start) * 1000:.0f} ms, total {(end - start) * 1000:.0f} ms; "
        f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ask":
        return _ask(args)
    if args.command == "download":
        from .download import download

        try:
            print(f"wrote {download(args.to)}; serve it with AVCHAT_MODEL={args.to}")
        except OSError as exc:  # huggingface_hub's errors are OSErrors: no network, gated, missing
            return _fail(
                f"could not download the weights ({str(exc).splitlines()[0]}); rerun it to resume, "
                "where the Hugging Face hub is reachable"
            )
        return 0
    from .bunny import main as import_bunny

    return import_bunny([args.source, args.target])


if __name__ == "__main__":
    raise SystemExit(main())
