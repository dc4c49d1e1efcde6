"""Command line for the video chat API.

    python -m clients chat VIDEO "question"      stream the answer to stdout
    python -m clients chat VIDEO                 interactive multi-turn chat about the video
    python -m clients chat VIDEO "q" --json      print the chat.completion object
    python -m clients models                     list the served models

Connection settings: --base-url / $AVCHAT_BASE_URL, --api-key / $AVCHAT_API_KEY.

Exit codes: 0 ok, 1 other API error, 2 usage, 3 cannot connect or timed out, 4 authentication,
5 bad request (400/422), 6 not found, 7 video rejected (413/415), 8 server error or unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import (
    APIConnectionError,
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    Client,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)

EXIT_CODES = [
    (APIConnectionError, 3),
    (AuthenticationError, 4),
    (BadRequestError, 5),
    (UnprocessableEntityError, 5),
    (NotFoundError, 6),
    (PayloadTooLargeError, 7),
    (UnsupportedMediaTypeError, 7),
    (InternalServerError, 8),
]


def _connection(suppress: bool) -> argparse.ArgumentParser:
    """The connection options, accepted before or after the subcommand."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--base-url", default=default(None), help="service URL (default $AVCHAT_BASE_URL or http://127.0.0.1:8000)"
    )
    p.add_argument("--api-key", default=default(None), help="bearer key (default $AVCHAT_API_KEY)")
    p.add_argument("--timeout", type=float, default=default(600.0), help="seconds per request (default 600)")
    p.add_argument("--max-retries", type=int, default=default(2))
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clients",
        description="Ask a running avchat service about a video.",
        parents=[_connection(False)],
        epilog="exit codes: 0 ok, 1 other API error, 2 usage, 3 connection/timeout, "
        "4 authentication, 5 bad request, 6 not found, 7 video rejected, 8 server",
    )
    sub = p.add_subparsers(dest="command", required=True)
    chat = sub.add_parser(
        "chat", help="ask about a video (interactive without a question)", parents=[_connection(True)]
    )
    chat.add_argument("video", help="a video or image file, or a video_id from an earlier answer")
    chat.add_argument("question", nargs="?", help="the question; omit it for an interactive chat")
    chat.add_argument("--json", action="store_true", help="print the whole chat.completion object")
    chat.add_argument(
        "--modalities",
        "--input-modalities",
        dest="modalities",
        default=None,
        help="audio,video (default), video or audio",
    )
    chat.add_argument("--start", type=float, default=None, help="analyse from this second")
    chat.add_argument("--end", type=float, default=None, help="analyse up to this second")
    chat.add_argument("--max-tokens", type=int, default=None)
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--top-p", type=float, default=None)
    chat.add_argument("--seed", type=int, default=None)
    sub.add_parser("models", help="list the served models", parents=[_connection(True)])
    return p


def _ask(conversation, question: str, as_json: bool, out) -> None:
    if as_json:
        result = conversation.ask(question)
        out.write(json.dumps(result.model_dump(), indent=2) + "\n")
        return
    with conversation.ask(question, stream=True) as stream:
        for chunk in stream:
            for choice in chunk.choices:
                out.write(choice.delta.content or "")
                out.flush()
    out.write("\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Client(
            base_url=args.base_url, api_key=args.api_key, timeout=args.timeout, max_retries=args.max_retries
        ) as client:
            if args.command == "models":
                for m in client.models.list().data:
                    print(f"{m.id}\tengine={m.engine}\tcontext={m.max_model_len}\tmodalities={','.join(m.modalities)}")
                return 0
            if not args.video.startswith("vid-") and not os.path.isfile(args.video):
                print(f"error: {args.video}: no such file", file=sys.stderr)
                return 2
            options = {
                k: v
                for k, v in (
                    ("max_tokens", args.max_tokens),
                    ("temperature", args.temperature),
                    ("top_p", args.top_p),
                    ("seed", args.seed),
                    ("start", args.start),
                    ("end", args.end),
                    ("input_modalities", args.modalities),
                )
                if v is not None
            }
            conversation = client.video.chat.conversation(args.video, **options)
            if args.question is not None:
                _ask(conversation, args.question, args.json, sys.stdout)
                return 0
            print(f"chatting about {args.video}; an empty line or Ctrl-D ends", file=sys.stderr)
            while True:
                try:
                    question = input("you> ").strip()
                except EOFError:
                    return 0
                if not question:
                    return 0
                sys.stdout.write("assistant> ")
                _ask(conversation, question, args.json, sys.stdout)
    except KeyboardInterrupt:
        return 130
    except APIError as exc:
        code = next((c for cls, c in EXIT_CODES if isinstance(exc, cls)), 1)
        where = (
            f" (HTTP {exc.status_code}{', ' + exc.type if exc.type else ''})" if isinstance(exc, APIStatusError) else ""
        )
        print(f"error: {exc.message}{where}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
