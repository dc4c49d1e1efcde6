"""Command line: ask a question about a video and stream the answer.

    python -m model ask VIDEO "question" [--checkpoint DIR | --preset tiny] [--modalities audio,video]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="ask one question about a video (or audio) file")
    ask.add_argument("video", help="a video or audio file")
    ask.add_argument("question", help="what to ask about it")
    src = ask.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="a checkpoint folder (what training writes)")
    src.add_argument("--preset", default=None,
                     help="a built-in preset: demo (default; trained on synthetic clips), tiny (random weights) or phi2")
    ask.add_argument("--modalities", default=None,
                     help="comma-separated subset of audio,video (default: what the model was trained on)")
    ask.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate (default 64)")
    ask.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    return p


def _ask(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from .media import MediaError, load_media
    from .modeling import AVChatModel
    from .processor import ContextLengthError

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not os.path.exists(args.video):
        print(f"error: {args.video}: no such file", file=sys.stderr)
        return 2
    modalities = None
    if args.modalities:
        modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
        bad = set(modalities) - {"audio", "video"}
        if bad:
            print(f"error: --modalities takes audio and/or video, not {', '.join(sorted(bad))}", file=sys.stderr)
            return 2
    if args.max_tokens < 1:
        print("error: --max-tokens must be at least 1", file=sys.stderr)
        return 2
    source = args.checkpoint or args.preset or "demo"
    try:
        model = AVChatModel.from_pretrained(source, device=args.device)
    except (OSError, FileNotFoundError, ValueError) as exc:
        print(f"error: cannot load the model from {source!r}: {exc}", file=sys.stderr)
        return 2
    cfg = model.config
    use = modalities or cfg.modalities
    try:
        media = load_media(args.video, num_frames=cfg.num_frames, size=cfg.image_size,
                           audio_seconds=cfg.audio_seconds, use_video="video" in use, use_audio="audio" in use)
        sample = model.processor([{"role": "user", "content": args.question}], media, modalities=use,
                                 max_new_tokens=args.max_tokens)
    except (MediaError, ContextLengthError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    ids: list[int] = []
    printed = ""
    first = None
    with torch.inference_mode():
        embeds = model.prompt_embeds(sample)
        for token in model.generate(embeds, max_new_tokens=args.max_tokens, temperature=args.temperature,
                                    top_p=args.top_p, seed=args.seed):
            first = first or time.perf_counter()
            ids.append(token)
            text = model.processor.decode(ids)
            if not text.endswith("\ufffd"):  # hold back half a multi-byte character
                sys.stdout.write(text[len(printed):])
                sys.stdout.flush()
                printed = text
    end = time.perf_counter()
    counts = sample.token_counts
    print()
    print(f"[tokens] prompt {sum(counts.values())} = audio {counts['audio']} + video {counts['video']} + "
          f"text {counts['text']}; generated {len(ids)}", file=sys.stderr)
    print(f"[time] first token {((first or end) - start) * 1000:.0f} ms, total {(end - start) * 1000:.0f} ms; "
          f"frames {0 if media.frames is None else len(media.frames.timestamps)} ({media.frames.mode if media.frames else '-'}), "
          f"audio {'%.1f s' % (len(media.audio) / 16000) if media.audio is not None else 'none'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ask":
        return _ask(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
