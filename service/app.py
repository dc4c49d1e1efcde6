"""The FastAPI app: ``uvicorn service.app:app`` serves the model named by ``AVCHAT_MODEL``
(default: the built-in ``tiny``).

Routes: ``POST /v1/video/chat`` (multipart upload), ``POST /v1/chat/completions`` (OpenAI),
``GET /v1/models``, ``/health``, ``/ready``, ``/metrics``.
"""


import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from .engine import SamplingParams
from .errors import BadRequest, ClientGone, NotFound, NotReady, ServiceError, Timeout, Unauthorized, Unprocessable
from .metrics import METRICS
from .protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ErrorResponse, ModelCard, ModelList, error_body
from .settings import Settings, get_settings
from .uploads import TempVideo, fetch_url, read_multipart, save_data_url

log = logging.getLogger("avchat.service")
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503, 504)}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
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


class RequestContext:
    """Pure ASGI middleware: a request id on every response, a JSON access log line, and the
    request counter by route and status. (BaseHTTPMiddleware would break streaming cancellation.)"""

    ROUTES = {"/v1/video/chat", "/v1/chat/completions", "/v1/models", "/health", "/ready", "/metrics"}

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or f"req-{uuid.uuid4().hex[:16]}"
        scope.setdefault("state", {})["request_id"] = rid
        status = {"code": 500}
        start = time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope["path"]
            route = path if path in self.ROUTES else "other"
            METRICS.requests.labels(route, str(status["code"])).inc()
            log.info("request", extra={"fields": {"request_id": rid, "method": scope["method"], "path": path,
                                                  "status": status["code"],
                                                  "ms": round((time.perf_counter() - start) * 1000, 1)}})


class State:
    """What the lifespan loads; ``ready`` only once the model is loaded."""

    def __init__(self):
        self.ready = False
        self.model = self.worker = self.engine = self.chat = None
        self.error: str | None = None


def _load_model(settings: Settings):
    """The model, loaded in a worker thread (torch is imported here, not at app import)."""
    import torch

    from model import AVChatModel

    return AVChatModel.from_pretrained(settings.model, dtype=getattr(torch, settings.dtype), device=settings.device)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    _setup_logging()
    state = State()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        os.makedirs(settings.temp_dir, exist_ok=True)
        load = asyncio.create_task(_startup(state, settings))
        yield
        load.cancel()
        if state.engine is not None:
            await state.engine.close()
        if state.worker is not None:
            state.worker.close()

    app = FastAPI(title="avchat", version="0.1.0", lifespan=lifespan,
                  description="Audio-visual video chat: ask about a video, get an answer that uses what is heard "
                              "as well as what is seen.")
    app.state.avchat = state
    app.state.settings = settings
    app.add_middleware(RequestContext)
    _install_error_handlers(app)

    def require_key(request: Request) -> None:
        if not settings.api_keys:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in settings.api_keys:
            raise Unauthorized("missing or invalid API key; send 'Authorization: Bearer <key>'",
                               code="invalid_api_key")

    def require_ready() -> State:
        if not state.ready:
            raise NotReady("the model is still loading" if state.error is None else
                           f"the model failed to load: {state.error}", headers={"Retry-After": "5"})
        return state

    Authorized = Annotated[None, Depends(require_key)]
    Ready = Annotated[State, Depends(require_ready)]

    @app.get("/health", tags=["operations"])
    async def health() -> dict:
        """Alive (answers while the model loads)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def ready(_: Ready) -> dict:
        """200 once the model is loaded, 503 before."""
        return {"status": "ready", "model": settings.model_id, "engine": state.engine.name}

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["openai"], responses=ERRORS)
    async def models(_: Authorized, st: Ready) -> ModelList:
        """The served model, with the engine that runs it."""
        return ModelList(data=[ModelCard(id=settings.model_id, engine=st.engine.name,
                                         max_model_len=st.model.config.context_length,
                                         modalities=list(st.model.config.modalities))])

    @app.post("/v1/video/chat", tags=["video"], response_model=ChatCompletion, responses={
        **ERRORS, 200: {"content": {"text/event-stream": {}, "application/json": {}},
                        "description": "a chat.completion, or with stream=true server-sent chat.completion.chunk "
                                       "events ending `data: [DONE]`"}},
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
            "schema": {"$ref": "#/components/schemas/VideoChatForm"}}}}})
    async def video_chat(request: Request, _: Authorized, st: Ready):
        """Ask about an uploaded video (multipart: `video` file or `video_id`, plus `messages` or `prompt`)."""
        started = time.perf_counter()
        with st.chat.admission.admit():
            form = await _with_disconnect(request, read_multipart(request, settings.temp_dir,
                                                                  settings.max_upload_bytes))
            try:
                params = _parse_form(form.fields)
                if form.video is not None and params.video_id:
                    raise BadRequest("send either a video file or a video_id, not both", param="video_id")
                messages = params.chat_messages()
                prepared = await _prepare(request, st, settings, messages, form.video, params.video_id,
                                          params.modalities, params.max_tokens or settings.default_max_tokens)
            finally:
                if form.video is not None:
                    form.video.remove()
            return await _respond(request, st, settings, prepared, params.sampling(settings), params.stream,
                                  params.include_usage, started, "/v1/video/chat")

    @app.post("/v1/chat/completions", tags=["openai"], response_model=ChatCompletion, responses={
        **ERRORS, 200: {"content": {"text/event-stream": {}, "application/json": {}},
                        "description": "a chat.completion, or server-sent chat.completion.chunk events"}})
    async def chat_completions(request: Request, body: ChatCompletionRequest, _: Authorized, st: Ready):
        """OpenAI Chat Completions with a `video_url` content part (data: URL or an allowed http(s) host)."""
        started = time.perf_counter()
        with st.chat.admission.admit():
            messages, url = _openai_messages(body)
            video: TempVideo | None = None
            try:
                if url is not None and body.video_id:
                    raise BadRequest("send either a video_url or a video_id, not both", param="video_id")
                if url is not None:
                    if url.startswith("data:"):
                        video = await asyncio.to_thread(save_data_url, url, settings.temp_dir,
                                                        settings.max_upload_bytes)
                    else:
                        video = await _with_disconnect(request, fetch_url(
                            url, settings.allowed_video_hosts, settings.temp_dir, settings.max_upload_bytes,
                            settings.request_timeout_s))
                max_tokens = body.max_completion_tokens or body.max_tokens or settings.default_max_tokens
                prepared = await _prepare(request, st, settings, messages, video, body.video_id, body.modalities,
                                          max_tokens)
            finally:
                if video is not None:
                    video.remove()
            stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
            params = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                    seed=body.seed, stop=stop)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _respond(request, st, settings, prepared, params, body.stream, include_usage, started,
                                  "/v1/chat/completions")

    _document_video_form(app)
    return app


async def _startup(state: State, settings: Settings) -> None:
    try:
        from .engine import create_engine
        from .media_worker import MediaWorker
        from .serving import ChatService

        model = await asyncio.to_thread(_load_model, settings)
        state.model = model
        state.worker = MediaWorker(model, settings)
        state.engine = await asyncio.to_thread(create_engine, settings.engine, model, settings)
        if hasattr(state.engine, "start"):
            await state.engine.start()
        state.chat = ChatService(model, state.worker, state.engine, settings)
        METRICS.engine.labels(state.engine.name, settings.model_id).set(1)
        state.ready = True
        log.info("ready", extra={"fields": {"model": settings.model, "engine": state.engine.name}})
    except Exception as exc:
        state.error = f"{type(exc).__name__}: {exc}"
        log.exception("model load failed")


async def _with_disconnect(request: Request, coro):
    """Runs ``coro``, cancelling it (and the ffmpeg it runs) if the client disconnects."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _prepare(request, st: State, settings: Settings, messages, video: TempVideo | None,
                   video_id: str | None, modalities, max_tokens: int):
    async def work():
        features = None
        if video is not None:
            features = await st.worker.features(video.path, video.video_id)
        elif video_id:
            features = st.worker.lookup(video_id)
            if features is None:
                raise NotFound(f"unknown or expired video_id {video_id!r}; upload the video again",
                               param="video_id", code="video_not_found")
        return await st.chat.prepare(messages, features, modalities, max_tokens)

    try:
        return await asyncio.wait_for(_with_disconnect(request, work()), settings.request_timeout_s)
    except asyncio.TimeoutError:
        raise Timeout(f"the request took longer than {settings.request_timeout_s:.0f} s") from None


async def _respond(request, st: State, settings, prepared, params: SamplingParams, stream: bool,
                   include_usage: bool, started: float, route: str):
    if stream:
        async def events():
            try:
                async for event in st.chat.stream(prepared, params, started, include_usage):
                    yield event
            finally:
                METRICS.e2e.labels(route).observe(time.perf_counter() - started)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    remaining = max(settings.request_timeout_s - (time.perf_counter() - started), 0.1)
    try:
        result = await asyncio.wait_for(_with_disconnect(request, st.chat.complete(prepared, params, started)),
                                        remaining)
    except asyncio.TimeoutError:
        raise Timeout(f"the request took longer than {settings.request_timeout_s:.0f} s") from None
    METRICS.e2e.labels(route).observe(time.perf_counter() - started)
    return JSONResponse(result.model_dump())


# -- the multipart form ----------------------------------------------------------------------------


class VideoChatForm(BaseModel):
    """Fields of ``POST /v1/video/chat`` (multipart/form-data)."""

    video: bytes | None = Field(None, description="the video (or audio) file; or send video_id")
    video_id: str | None = Field(None, description="a video_id from an earlier answer")
    messages: str | None = Field(None, description="OpenAI-style messages as a JSON array (text content)")
    prompt: str | None = Field(None, description="a single question, instead of messages")
    stream: bool = False
    stream_options: str | None = Field(None, description='JSON, e.g. {"include_usage": true}')
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | None = Field(None, description="a stop string, or a JSON array of them")
    modalities: str | None = Field(None, description="audio,video (default), video, or audio")


class _ParsedForm(BaseModel):
    video_id: str | None = None
    messages: list[dict] | None = None
    prompt: str | None = None
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    modalities: list[str] | None = None

    def chat_messages(self) -> list[dict]:
        if self.messages and self.prompt:
            raise BadRequest("send either messages or prompt, not both", param="messages")
        if self.messages:
            return self.messages
        if self.prompt and self.prompt.strip():
            return [{"role": "user", "content": self.prompt}]
        raise BadRequest("ask something: send `prompt` or `messages`", param="prompt")

    def sampling(self, settings) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens or settings.default_max_tokens,
                              temperature=self.temperature, top_p=self.top_p, seed=self.seed, stop=self.stop)


def _parse_form(fields: dict[str, str]) -> _ParsedForm:
    data: dict = {k: v for k, v in fields.items() if v != ""}
    unknown = set(data) - set(VideoChatForm.model_fields)
    if unknown:
        raise Unprocessable(f"unknown form field(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    for key in ("messages", "stream_options"):
        if key in data:
            try:
                data[key] = json.loads(data[key])
            except json.JSONDecodeError:
                raise Unprocessable(f"`{key}` must be JSON", param=key) from None
    if isinstance(data.get("stream_options"), dict):
        data["include_usage"] = bool(data.pop("stream_options").get("include_usage"))
    if "stop" in data:
        text = data["stop"]
        data["stop"] = json.loads(text) if text.startswith("[") else [text]
    if "modalities" in data:
        text = data["modalities"]
        mods = json.loads(text) if text.startswith("[") else [m.strip() for m in text.replace("+", ",").split(",")]
        bad = [m for m in mods if m not in ("audio", "video")]
        if bad or not mods:
            raise BadRequest(f"modalities takes audio and/or video, not {', '.join(bad) or 'nothing'}",
                             param="modalities")
        data["modalities"] = mods
    if "messages" in data:
        msgs = data["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise Unprocessable("`messages` must be a JSON array of {role, content} objects", param="messages")
    try:
        return _ParsedForm(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise Unprocessable(f"{field}: {err['msg']}", param=field) from None


def _openai_messages(body: ChatCompletionRequest) -> tuple[list[dict], str | None]:
    messages, urls = [], []
    for m in body.messages:
        if isinstance(m.content, list):
            text = []
            for part in m.content:
                if part.type == "video_url":
                    urls.append(part.video_url.url)
                else:
                    text.append(part.text)
            messages.append({"role": m.role, "content": "\n".join(text)})
        else:
            messages.append({"role": m.role, "content": m.content or ""})
    if len(urls) > 1:
        raise BadRequest("send one video_url per conversation", param="messages")
    return messages, (urls[0] if urls else None)


def _document_video_form(app: FastAPI) -> None:
    original = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["VideoChatForm"] = \
            VideoChatForm.model_json_schema(ref_template="#/components/schemas/{model}")
        props = schema["components"]["schemas"]["VideoChatForm"]["properties"]
        props["video"] = {"type": "string", "format": "binary", "description": props["video"].get("description")}
        # Server-sent events carry ChatCompletionChunk objects: publish their schema too.
        chunk = ChatCompletionChunk.model_json_schema(mode="serialization",
                                                      ref_template="#/components/schemas/{model}")
        for name, definition in chunk.pop("$defs", {}).items():
            schema["components"]["schemas"].setdefault(name, definition)
        schema["components"]["schemas"]["ChatCompletionChunk"] = chunk
        for path in ("/v1/video/chat", "/v1/chat/completions"):
            content = schema["paths"][path]["post"]["responses"]["200"]["content"]
            content["text/event-stream"] = {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}
        return schema

    app.openapi = openapi


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone):
        return JSONResponse(error_body("client closed the request", "client_closed"), status_code=499)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        return JSONResponse(error_body(f"{'.'.join(loc) or 'body'}: {err['msg']}", "invalid_request_error",
                                       param=".".join(loc) or None), status_code=422)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return JSONResponse(error_body(f"no route {request.method} {request.url.path}", "not_found_error"),
                            status_code=404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc):
        return JSONResponse(error_body(f"{request.method} is not allowed on {request.url.path}",
                                       "invalid_request_error"), status_code=405)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(error_body("internal error; see the service log", "server_error"), status_code=500)


def __getattr__(name: str):
    # `uvicorn service.app:app` builds the app on first access, from the environment.
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)
