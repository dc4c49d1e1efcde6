"""The routes: thin HTTP glue that calls one entry point each."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse

from .deps import Loaded, Ready
from .protocol import ChatCompletion, ErrorResponse, ModelCard, ModelList

router = APIRouter()
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 415, 422, 503, 504)}
STREAM = {
    "content": {"text/event-stream": {}, "application/json": {}},
    "description": "a chat.completion, or with stream=true server-sent chat.completion.chunk events ending "
    "`data: [DONE]`",
}


def _body(schema: str, media_type: str) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {media_type: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


STATIC = Path(__file__).resolve().parent / "static"


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The try-it page (plain HTML and JavaScript over this API; no build step, nothing from a CDN)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/health", tags=["operations"])
async def health() -> dict:
    """Alive (answers while the model loads)."""
    return {"status": "ok"}


@router.get("/ready", tags=["operations"], responses={503: {"model": ErrorResponse}})
async def ready(state: Ready) -> dict:
    """200 once the model is loaded, 503 before."""
    return {"status": "ready", "model": state.settings.model_id, "engine": state.engine.name}


@router.get("/v1/models", tags=["openai"], responses=ERRORS)
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
    "/v1/video/chat",
    tags=["video"],
    response_model=ChatCompletion,
    responses={**ERRORS, 200: STREAM},
    openapi_extra=_body("VideoChatForm", "multipart/form-data"),
)
async def video_chat(request: Request, state: Ready):
    """Ask about an uploaded video or image (multipart: `video`, `image` or `video_id`, plus `prompt` or `messages`)."""
    return await state.chat.handle(request, "/v1/video/chat")


@router.post(
    "/v1/chat/completions",
    tags=["openai"],
    response_model=ChatCompletion,
    responses={**ERRORS, 200: STREAM},
    openapi_extra=_body("ChatCompletionRequest", "application/json"),
)
async def chat_completions(request: Request, state: Ready):
    """OpenAI Chat Completions with a `video_url` or `image_url` content part."""
    return await state.chat.handle(request, "/v1/chat/completions")


def metrics_response() -> PlainTextResponse:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from .metrics import METRICS

    return PlainTextResponse(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)


metrics_router = APIRouter()


@metrics_router.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
async def metrics(state: Loaded) -> PlainTextResponse:
    """Prometheus metrics."""
    return metrics_response()
