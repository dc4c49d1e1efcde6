"""The routes: the HTTP edge. Each chat route parses its own request (``intake.py``), calls
:meth:`ChatService.create <service.serving.ChatService.create>` and turns the value that comes
back into a response: a completion into JSON, a stream into server-sent events ending
``data: [DONE]``. A client that leaves mid-request cancels the work for it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse

from . import paths
from .deps import Loaded, Ready, State
from .errors import ClientGone
from .intake import read_chat_completion, read_video_chat
from .metrics import METRICS
from .responses import ChatCompletion, ErrorResponse, ModelCard, ModelList
from .serving import ChatStream

router = APIRouter()
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 415, 422, 503, 504, 507)}
STREAM = {
    "content": {"text/event-stream": {}, "application/json": {}},
    "description": "a chat.completion, or with stream=true server-sent chat.completion.chunk events ending "
    "`data: [DONE]`",
}
STATIC = Path(__file__).resolve().parent / "static"
AFFINITY = "X-Avchat-Affinity"  # the header to route follow-ups on (deploy/haproxy/haproxy.cfg hashes it)
AFFINITY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _body(schema: str, media_type: str) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {media_type: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


@router.get(paths.PAGE, include_in_schema=False)
async def page() -> FileResponse:
    """The try-it page (plain HTML and JavaScript over this API; no build step, nothing from a CDN)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get(paths.HEALTH, tags=["operations"])
async def health() -> dict:
    """Alive (answers while the model loads)."""
    return {"status": "ok"}


@router.get(paths.READY, tags=["operations"], responses={503: {"model": ErrorResponse}})
async def ready(state: Ready) -> dict:
    """200 while the service can answer: model loaded, ffmpeg usable, engine alive; 503 (and why)
    otherwise. ``feature_store`` is ``ok``, ``degraded`` (Redis unreachable: this replica's cache
    alone) or ``off``."""
    store = state.worker.tiers.store
    return {
        "status": "ready",
        "model": state.settings.model_id,
        "engine": state.engine.name,
        "feature_store": "off" if store is None else store.status,
    }


@router.get(paths.MODELS, tags=["openai"], responses=ERRORS)
async def models(state: Ready) -> ModelList:
    """The served model, with the engine that runs it."""
    config = state.model.config
    return ModelList(
        data=[
            ModelCard(
                id=state.settings.model_id,
                engine=state.engine.name,
                max_model_len=config.context_length,
                modalities=list(config.modalities),
            )
        ]
    )


@router.post(
    paths.VIDEO_CHAT,
    tags=["video"],
    response_model=ChatCompletion,
    responses={**ERRORS, 200: STREAM},
    openapi_extra=_body("VideoChatForm", "multipart/form-data"),
)
async def video_chat(request: Request, state: Ready):
    """Ask about an uploaded video or image (multipart: `video`, `image` or `video_id`, plus `prompt` or `messages`)."""
    started = time.perf_counter()
    intake = await read_video_chat(request, state.settings, state.admission, state.model.processor)
    return await _answer(request, state, intake, paths.VIDEO_CHAT, started)


@router.post(
    paths.CHAT_COMPLETIONS,
    tags=["openai"],
    response_model=ChatCompletion,
    responses={**ERRORS, 200: STREAM},
    openapi_extra=_body("ChatCompletionRequest", "application/json"),
)
async def chat_completions(request: Request, state: Ready):
    """OpenAI Chat Completions with a `video_url` or `image_url` content part."""
    started = time.perf_counter()
    intake = await read_chat_completion(request, state.settings, state.admission, state.model.processor)
    return await _answer(request, state, intake, paths.CHAT_COMPLETIONS, started)


async def _answer(request: Request, state: State, intake, route: str, started: float):
    owner = request.scope.get("state", {}).get("owner", "")
    try:
        result = await _watch(request, state.chat.create(intake, owner))
    finally:
        intake.discard()  # already removed unless the request ended before the service took it
    # The key to route this conversation's next requests on (a router hashes it): the one the
    # request came with, else the video it was about.
    asked = request.headers.get(AFFINITY, "")
    video_id = result.prepared.video_id if isinstance(result, ChatStream) else result.video_id
    key = asked if AFFINITY_KEY.fullmatch(asked) else video_id
    affinity = {AFFINITY: key} if key else {}
    if isinstance(result, ChatStream):
        return StreamingResponse(
            _events(result, route, started),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **affinity},
        )
    METRICS.e2e.labels(route).observe(time.perf_counter() - started)
    return JSONResponse(result.model_dump(), headers=affinity)


async def _events(stream: ChatStream, route: str, started: float):
    """Server-sent events: each chunk (or the in-band error) as ``data: {json}``, then ``[DONE]``."""
    try:
        async for item in stream:
            yield f"data: {item.model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await stream.aclose()
        METRICS.e2e.labels(route).observe(time.perf_counter() - started)


async def _watch(request: Request, coro):
    """Runs ``coro``, cancelling it (and the ffmpeg it runs) if the client disconnects."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def metrics_response() -> PlainTextResponse:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return PlainTextResponse(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)


metrics_router = APIRouter()


@metrics_router.get(paths.METRICS, tags=["operations"], response_class=PlainTextResponse)
async def metrics(state: Loaded) -> PlainTextResponse:
    """Prometheus metrics."""
    return metrics_response()
