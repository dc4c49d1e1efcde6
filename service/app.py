"""The FastAPI app: ``python -m service`` (or ``uvicorn --factory service.app:create_app``) serves
the model named by ``AVCHAT_MODEL`` (default: the built-in ``demo``).

Here: the lifespan (the model loads in the background; /ready says when), the middleware, and
the one place where errors become HTTP answers. Routes are in ``api_router.py``, request logic
in ``serving.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from . import openapi
from .api_router import STATIC, metrics_router, router
from .deps import State
from .errors import ERROR_TABLE, describe, error_body
from .metrics import METRICS
from .middleware import AuthGuard, RequestContext
from .settings import Settings, get_settings
from .uploads import remove_stale_uploads

log = logging.getLogger("avchat.service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    _setup_logging()
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        os.makedirs(settings.temp_dir, exist_ok=True)
        removed = remove_stale_uploads(settings.temp_dir)
        if removed:
            log.info("removed uploads left by a stopped process", extra={"fields": {"files": removed}})
        if settings.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(settings.metrics_port, registry=METRICS.registry)
        load = asyncio.create_task(_startup(state))
        yield
        load.cancel()
        if state.engine is not None:
            await state.engine.close()
        if state.worker is not None:
            state.worker.close()

    docs = settings.docs_open
    app = FastAPI(
        title="avchat",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        description="Audio-visual video chat: ask about a video, get an answer that uses what is heard "
        "as well as what is seen.",
    )
    app.state.avchat = state
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if not settings.metrics_port:
        app.include_router(metrics_router)
    app.add_middleware(
        AuthGuard, keys=settings.api_keys, protect_metrics=settings.metrics_require_key, protect_docs=False
    )
    app.add_middleware(RequestContext)
    for kind, *_ in ERROR_TABLE:  # handled inside the middleware (logged, counted, given a request id)
        app.add_exception_handler(kind, _error)
    app.add_exception_handler(Exception, _error)  # the rest: Starlette's outermost layer, a 500
    app.add_exception_handler(RequestValidationError, _validation)
    for status in (404, 405):
        app.add_exception_handler(status, _route_error)
    openapi.install(app)
    return app


async def _error(request: Request, exc: Exception) -> JSONResponse:
    status, body, headers = describe(exc)
    if status >= 500 and status != 503 and status != 504:
        log.error("unhandled error", exc_info=exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
    return JSONResponse(error_body(f"{where}: {err['msg']}", "invalid_request_error", where), status_code=422)


async def _route_error(request: Request, exc) -> JSONResponse:
    if exc.status_code == 405:
        return JSONResponse(
            error_body(f"{request.method} is not allowed on {request.url.path}", "invalid_request_error"),
            status_code=405,
        )
    return JSONResponse(error_body(f"no route {request.method} {request.url.path}", "not_found_error"), status_code=404)


async def _startup(state: State) -> None:
    from .engines import choose, create_engine
    from .media_worker import MediaWorker
    from .serving import ChatService

    settings = state.settings
    try:
        kind = choose(settings.engine, settings.device)
        # With vLLM running the LLM, the service keeps only its embedding table (not a second copy).
        model = await asyncio.to_thread(_load_model, settings, kind == "vllm")
        try:
            engine = await asyncio.to_thread(create_engine, kind, model, settings)
        except Exception as exc:
            if settings.engine != "auto":
                raise
            log.warning("vLLM did not start (%s); using the transformers engine", exc)
            model = await asyncio.to_thread(_load_model, settings, False)
            engine = create_engine("transformers", model, settings)
        state.model, state.engine = model, engine
        state.worker = MediaWorker(model, settings)
        state.chat = ChatService(model, state.worker, engine, settings, generation_defaults(model))
        METRICS.engine.labels(engine.name, settings.model_id).set(1)
        state.ready = True
        log.info("ready", extra={"fields": {"model": settings.model, "engine": engine.name}})
    except Exception as exc:
        state.error = f"{type(exc).__name__}: {exc}"
        log.error("model load failed: %s", state.error)


def _load_model(settings: Settings, embeddings_only: bool):
    """The model, loaded in a worker thread so /health answers meanwhile."""
    import torch
    from transformers.utils import logging as hf_logging

    from model import AVChatModel

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in a service log
    return AVChatModel.from_pretrained(
        settings.model, dtype=getattr(torch, settings.dtype), device=settings.device, embeddings_only=embeddings_only
    )


def generation_defaults(model) -> dict:
    """Sampling defaults from the checkpoint's generation_config.json, as vLLM takes them: greedy
    unless it samples (``do_sample``), then its temperature and top_p; its max_new_tokens."""
    config = model.generation_config
    if config is None:
        return {}
    defaults = (
        {"temperature": float(config.temperature or 1.0), "top_p": float(config.top_p or 1.0)}
        if config.do_sample
        else {"temperature": 0.0}
    )
    if config.max_new_tokens:
        defaults["max_tokens"] = int(config.max_new_tokens)
    return defaults


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging() -> None:
    root = logging.getLogger("avchat")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_JsonFormatter())
        root.addHandler(handler)
        root.setLevel(os.environ.get("AVCHAT_LOG_LEVEL", "INFO").upper())
        root.propagate = False
