"""The published OpenAPI schema: the request bodies the routes read themselves (the multipart
form and the Chat Completions JSON) and the chunk objects of the event streams."""

from __future__ import annotations

from fastapi import FastAPI

from .forms import VideoChatForm
from .protocol import ChatCompletionChunk, ChatCompletionRequest


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
        for path in ("/v1/video/chat", "/v1/chat/completions"):
            content = schema["paths"][path]["post"]["responses"]["200"]["content"]
            content["text/event-stream"] = {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
