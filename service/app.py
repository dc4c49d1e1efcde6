"""The FastAPI app: ``python -m service`` (or ``uvicorn --factory service.app:create_app``) serves
the model named by ``AVCHAT_MODEL`` (default: the built-in ``demo``).

Here: the lifespan (ffmpeg is checked and the model loads in the background, /ready says
when; an engine that dies stops the service), the middleware, and the one place where errors
become HTTP answers. Routes are in ``api_router.py``, request parsing in ``intake.py``, request
logic in ``serving.py``, admission in ``admission.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from model.ffmpeg import FfmpegMissing

from . import openapi, reaper
from .api_router import STATIC, metrics_router, router
from .batch_router import router as batch_router
from .batch_store import BatchStore
from .batches import Batches
from .deps import State
from .errors import ERROR_TABLE, describe, error_body
from .loading import load
from .metrics import METRICS
from .middleware import AuthGuard, HostGuard, RequestContext
from .settings import Settings, get_settings
from .uploads import remove_stale_uploads

log = logging.getLogger("avchat.service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    _setup_logging()
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.loop = asyncio.get_running_loop()
        os.makedirs(settings.temp_dir, exist_ok=True)
        _sweep(settings)
        guard = reaper.start_guard()
        if settings.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(settings.metrics_port, registry=METRICS.registry)
        load = asyncio.create_task(_startup(state))
        watch = asyncio.create_task(_watch_engine(state))
        yield
        load.cancel()
        watch.cancel()
        for task in state.tasks:
            task.cancel()
        if state.worker is not None and state.worker.tiers.store is not None:
            await state.worker.tiers.store.close()
        if state.batches is not None:
            state.batches.store.close()
        if state.chat is not None:
            state.chat.stop()
        if state.engine is not None:
            await state.engine.close()
        if state.worker is not None:
            state.worker.close()
        if guard is not None:
            guard.poll()

    docs = settings.docs_open
    app = FastAPI(
        title="avchat",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        description="Audio-visual video chat: ask about a video, get an answer that uses what is heard "
        "as well as what is seen.",
    )
    app.state.avchat = state
    app.include_router(router)
    app.include_router(batch_router)
    if docs:
        app.include_router(openapi.docs_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if not settings.metrics_port:
        app.include_router(metrics_router)
    app.add_middleware(
        AuthGuard, keys=settings.api_keys, protect_metrics=settings.metrics_require_key, protect_docs=False
    )
    app.add_middleware(HostGuard, names=settings.host_names)
    app.add_middleware(RequestContext)
    for kind, *_ in ERROR_TABLE:  # handled inside the middleware (logged, counted, given a request id)
        app.add_exception_handler(kind, _error)
    app.add_exception_handler(Exception, _error)  # the rest: Starlette's outermost layer, a 500
    app.add_exception_handler(RequestValidationError, _validation)
    for status in (404, 405):
        app.add_exception_handler(status, _route_error)
    openapi.install(app)
    return app


def _sweep(settings: Settings) -> None:
    """What a killed process left: upload files, vLLM's processes and socket folders."""
    left = {"uploads": remove_stale_uploads(settings.temp_dir), **reaper.sweep()}
    if any(left.values()):
        log.info("removed what a stopped process left", extra={"fields": left})


async def _watch_engine(state: State, every_s: float = 0.5) -> None:
    """An engine that dies makes the service unready and stops it with a non-zero exit (3), so
    that its orchestrator (Docker, Kubernetes, systemd) starts a fresh one."""
    while True:
        await asyncio.sleep(every_s)
        reason = state.engine.dead() if state.engine is not None else None
        if reason is not None and state.fatal is None:
            state.fatal = reason
            METRICS.ready.set(0)
            log.error("the generation engine died; stopping", extra={"fields": {"reason": reason}})
            state.chat.stop()  # nothing can finish now: no drain
            os.kill(os.getpid(), signal.SIGTERM)
            return


async def _error(request: Request, exc: Exception) -> JSONResponse:
    status, body, headers = describe(exc)
    if status == 500:  # not a domain error: a bug, with its traceback in the log
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
    """Loads everything in the background (/health answers meanwhile), then starts the tasks."""
    settings = state.settings
    try:
        parts = await load(settings)
    except FfmpegMissing as exc:
        state.error = str(exc)
        log.error("ffmpeg is not usable", extra={"fields": {"reason": state.error}})
        return
    except Exception as exc:
        state.error = f"the model failed to load: {type(exc).__name__}: {exc}"
        log.error("model load failed: %s", state.error)
        return
    state.model, state.engine, state.worker = parts.model, parts.engine, parts.worker
    state.admission, state.chat = parts.admission, parts.chat
    if state.worker.tiers.store is not None:
        state.tasks.append(asyncio.create_task(state.worker.tiers.store.watch()))
    state.batches = Batches(BatchStore(settings.data_dir), state.chat, settings)
    state.tasks.append(asyncio.create_task(state.batches.run()))
    METRICS.engine.labels(state.engine.name, settings.model_id).set(1)
    state.ready = True
    METRICS.ready.set(1)
    fields = {"model": settings.model, "engine": state.engine.name, "ffmpeg": parts.ffmpeg}
    log.info("ready", extra={"fields": fields | {"quantization": parts.model.config.quantization or "none"}})


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
