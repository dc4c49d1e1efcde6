"""The published OpenAPI schema: the request bodies the routes read themselves (the multipart
form and the Chat Completions JSON) and the chunk objects of the event streams; and the pages
that render it (``/docs``, ``/redoc``), whose scripts come from a CDN at pinned versions with
Subresource Integrity, so a changed or tampered file is not run."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse

from . import paths
from .forms import VideoChatForm
from .protocol import ChatCompletionRequest
from .responses import ChatCompletionChunk

CDN = "https://cdn.jsdelivr.net/npm"
# (package@version/file, sha384 of the file as npm publishes it)
ASSETS = {
    "swagger_js": (
        "swagger-ui-dist@5.35.0/swagger-ui-bundle.js",
        "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9",
    ),
    "swagger_css": (
        "swagger-ui-dist@5.35.0/swagger-ui.css",
        "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I",
    ),
    "redoc_js": (
        "redoc@2.5.4/bundles/redoc.standalone.js",
        "sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5",
    ),
}


def _tag(kind: str) -> str:
    path, integrity = ASSETS[kind]
    if kind.endswith("_css"):
        return f'<link rel="stylesheet" href="{CDN}/{path}" integrity="{integrity}" crossorigin="anonymous">'
    return f'<script src="{CDN}/{path}" integrity="{integrity}" crossorigin="anonymous"></script>'


def _page(title: str, head: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>avchat · {title}</title>{head}</head>'
        f"<body>{body}</body></html>"
    )


docs_router = APIRouter(include_in_schema=False)


@docs_router.get(paths.DOCS[0])
async def swagger() -> HTMLResponse:
    """Swagger UI over /openapi.json."""
    return _page(
        "API",
        _tag("swagger_css"),
        '<div id="swagger-ui"></div>'
        + _tag("swagger_js")
        + f"<script>SwaggerUIBundle({{url: '{paths.DOCS[2]}', dom_id: '#swagger-ui'}})</script>",
    )


@docs_router.get(paths.DOCS[1])
async def redoc() -> HTMLResponse:
    """ReDoc over /openapi.json."""
    return _page("API", "", f'<redoc spec-url="{paths.DOCS[2]}"></redoc>' + _tag("redoc_js"))


def install(app: FastAPI) -> None:
    original = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (VideoChatForm, ChatCompletionRequest):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in definition.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components[model.__name__] = definition
        for field in ("video", "image"):
            props = components["VideoChatForm"]["properties"]
            props[field] = {"type": "string", "format": "binary", "description": props[field].get("description")}
        # Server-sent events carry ChatCompletionChunk objects: publish their schema too.
        chunk = ChatCompletionChunk.model_json_schema(mode="serialization", ref_template="#/components/schemas/{model}")
        for name, definition in chunk.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components["ChatCompletionChunk"] = chunk
        for path in paths.CHAT:
            content = schema["paths"][path]["post"]["responses"]["200"]["content"]
            content["text/event-stream"] = {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
